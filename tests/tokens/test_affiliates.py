"""Affiliate offers, clicks and conversions (docs/economy.md, "Affiliate gating"), on SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import tokens.affiliates  # noqa: F401  (registers the models until app/__init__ imports them)
from app.extensions import db
from tests.support.statements import counted
from tokens import costs, ledger, money
from tokens.affiliates import (
    CONVERSION_STATES,
    OFFER_LINK_TTL,
    Click,
    Conversion,
    InvalidConversion,
    OfferLink,
    OfferNotAllowed,
    UnknownOfferLink,
    booking_key,
    click_hour,
    conversion_status,
    import_csv,
    is_allowed_url,
    issue_offer_links,
    offer_url,
    record_click,
    record_conversion,
    reversal_key,
    unlocked,
    usd_to_cents,
    use_unlock,
)
from tokens.catalog import load_catalog
from tokens.costs import RevenueEntry

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()


@pytest.fixture
def account(session) -> int:
    account_id = ledger.open_account(session, NOV).id
    session.commit()
    return account_id


def with_partner_url(code: str, url: str, catalog=CATALOG):
    """The catalog with partner `code`'s URL template replaced (bypassing the load check)."""
    settings = catalog.affiliates
    partners = tuple(replace(p, url=url) if p.code == code else p for p in settings.partners)
    return replace(catalog, affiliates=replace(settings, partners=partners))


def clicks(session) -> list[Click]:
    return list(session.scalars(select(Click).order_by(Click.id)))


def affiliate_revenue(session, account_id: int) -> int:
    session.expire_all()
    return costs.month(session, account_id, NOV).revenue_affiliate_musd


# --- offers -------------------------------------------------------------------------------


def test_offers_are_relevant_to_the_intent(session, account):
    settings = CATALOG.affiliates
    for intent in ("meal_plan", "grocery_list", "recipe_search", "dietary_advice"):
        offers = issue_offer_links(session, account, intent, CATALOG, NOV)
        wanted = set(settings.intent_categories[intent])
        assert 1 <= len(offers) <= 3
        for partner, link in offers:
            assert wanted & set(partner.categories), (intent, partner.code)
            assert (link.account_id, link.partner_code, link.intent) == (
                account, partner.code, intent)
            assert link.expires_at == NOV + OFFER_LINK_TTL
            assert len(link.token) >= 32
    assert [p.code for p, _ in issue_offer_links(session, account, "grocery_list", CATALOG,
                                                 NOV)] == ["greengrocer", "wholepantry"]
    assert issue_offer_links(session, account, "chat", CATALOG, NOV) == []
    assert len(issue_offer_links(session, account, "meal_plan", CATALOG, NOV, limit=1)) == 1


def test_offer_links_are_reused_per_account_partner_and_intent(session, account):
    first = issue_offer_links(session, account, "meal_plan", CATALOG, NOV)
    tokens_first = [link.token for _, link in first]
    assert len(set(tokens_first)) == len(tokens_first)
    again = issue_offer_links(session, account, "meal_plan", CATALOG, NOV + timedelta(days=1))
    assert [link.token for _, link in again] == tokens_first
    other_intent = issue_offer_links(session, account, "grocery_list", CATALOG, NOV)
    assert not {link.token for _, link in other_intent} & set(tokens_first)
    other_account = ledger.open_account(session, NOV).id
    theirs = issue_offer_links(session, other_account, "meal_plan", CATALOG, NOV)
    assert not {link.token for _, link in theirs} & set(tokens_first)
    # A link past half its life is not sent again: a new one is made.
    late = issue_offer_links(session, account, "meal_plan", CATALOG, NOV + timedelta(days=16))
    assert not {link.token for _, link in late} & set(tokens_first)
    assert offer_url("https://bot.example.com/", "abc") == "https://bot.example.com/r/abc"


def test_reused_offer_links_are_read_with_one_statement_and_per_partner(session, account):
    """Each partner gets its own newest link still fresh; a stale or other partner's link
    never stands in for it, and reusing every link costs one SELECT and no flush."""
    first = issue_offer_links(session, account, "meal_plan", CATALOG, NOV)
    assert [p.code for p, _ in first] == ["freshbox", "greengrocer", "wholepantry"]
    session.commit()
    # Ten days on, greengrocer alone gets a newer link (its first one made stale by hand).
    [stale] = [link for p, link in first if p.code == "greengrocer"]
    stale.expires_at = NOV + timedelta(days=20)
    newer = OfferLink(
        token="g" * 32, account_id=account, partner_code="greengrocer", intent="meal_plan",
        created_at=NOV + timedelta(days=10), expires_at=NOV + timedelta(days=40))
    session.add(newer)
    session.commit()
    with counted(engine=session.get_bind()) as statements:
        again = issue_offer_links(session, account, "meal_plan", CATALOG,
                                  NOV + timedelta(days=11))
    assert [(p.code, link.token) for p, link in again] == [
        ("freshbox", first[0][1].token), ("greengrocer", "g" * 32),
        ("wholepantry", first[2][1].token)]
    assert len(statements) == 1, statements
    assert statements[0].lstrip().upper().startswith("SELECT")
    # Day 16: the old ones are past half their life, greengrocer's newer one is not.
    late = issue_offer_links(session, account, "meal_plan", CATALOG, NOV + timedelta(days=16))
    codes = {p.code: link for p, link in late}
    assert codes["greengrocer"].token == "g" * 32
    assert codes["freshbox"].token != first[0][1].token and codes["freshbox"].id is not None


# --- clicks -------------------------------------------------------------------------------


def test_clicks_are_one_per_person_link_and_hour_with_one_click_id(session, account):
    """100 openings of one link in one hour: one click, one click id sent to the partner."""
    (partner, link), (_, second_link), *_ = issue_offer_links(session, account, "meal_plan",
                                                              CATALOG, NOV)
    assert partner.code == "freshbox"
    hour = NOV.replace(minute=0)
    urls = [record_click(session, link.token, CATALOG, hour + timedelta(seconds=36 * i))
            for i in range(100)]
    rows = clicks(session)
    assert len(rows) == 1
    (row,) = rows
    session.refresh(row)
    assert (row.account_id, row.offer_link_id, row.partner_code, row.opens, row.hour,
            row.created_at, row.used_at) == (account, link.id, "freshbox", 100, hour, hour, None)
    for url in urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.path) == ("https", "www.freshbox.example",
                                                              "/plans")
        assert parse_qs(parts.query) == {"ref": ["nutribot"], "subid": [row.click_id]}
    # The next clock hour is a new click with a new click id; so is another link in the same
    # hour, and another person's link.
    later = record_click(session, link.token, CATALOG, hour + timedelta(hours=1))
    record_click(session, second_link.token, CATALOG, hour + timedelta(minutes=59))
    other = ledger.open_account(session, NOV).id
    (_, theirs), *_ = issue_offer_links(session, other, "meal_plan", CATALOG, NOV)
    record_click(session, theirs.token, CATALOG, hour + timedelta(minutes=30))
    session.expire_all()
    rows = clicks(session)
    assert [(r.offer_link_id, r.account_id, r.hour, r.opens) for r in rows] == [
        (link.id, account, hour, 100), (link.id, account, hour + timedelta(hours=1), 1),
        (second_link.id, account, hour, 1), (theirs.id, other, hour, 1)]
    assert len({r.click_id for r in rows}) == 4
    assert parse_qs(urlsplit(later).query)["subid"] == [rows[1].click_id]
    assert click_hour(datetime(2026, 11, 21, 12, 59, 59, 999999, tzinfo=UTC)) == hour
    assert click_hour(datetime(2026, 11, 21, 13, 0, tzinfo=UTC)) == hour + timedelta(hours=1)


@pytest.mark.backends("postgresql")
def test_concurrent_openings_of_a_link_are_one_click(app, account):
    """Six openings of one link at once: one click row counting 6, one click id for all."""
    engine = db.engine
    with Session(engine) as setup:
        (_, link), *_ = issue_offer_links(setup, account, "meal_plan", CATALOG, NOV)
        token = link.token
        setup.commit()
    workers = 6
    barrier = threading.Barrier(workers)

    def open_link(_: int) -> str:
        with Session(engine) as own:
            barrier.wait()
            url = record_click(own, token, CATALOG, NOV)
            own.commit()
            return parse_qs(urlsplit(url).query)["subid"][0]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        sub_ids = set(pool.map(open_link, range(workers)))
    with Session(engine) as check:
        (row,) = check.scalars(select(Click)).all()
        assert (row.opens, sub_ids) == (workers, {row.click_id})


def test_unknown_expired_and_withdrawn_links_are_refused(session, account):
    offers = issue_offer_links(session, account, "meal_plan", CATALOG, NOV)
    token = offers[0][1].token
    for bad in ("", "nope", token + "x", token[:-1], "x" * 500):
        with pytest.raises(UnknownOfferLink):
            record_click(session, bad, CATALOG, NOV)
    with pytest.raises(UnknownOfferLink):
        record_click(session, token, CATALOG, NOV + OFFER_LINK_TTL)
    without_freshbox = replace(CATALOG, affiliates=replace(
        CATALOG.affiliates,
        partners=tuple(p for p in CATALOG.affiliates.partners if p.code != "freshbox")))
    with pytest.raises(UnknownOfferLink):
        record_click(session, token, without_freshbox, NOV)
    assert clicks(session) == []


@pytest.mark.parametrize("url", [
    "https://evil.example/?subid={click_id}",
    "http://www.freshbox.example/?subid={click_id}",
    "https://freshbox.example.evil.example/?subid={click_id}",
    "https://notfreshbox.example/?subid={click_id}",
    "https://www.freshbox.example@evil.example/?subid={click_id}",
    "https://evil.example\\@www.freshbox.example/?subid={click_id}",
    "https://evil.example\\.freshbox.example/?subid={click_id}",
    "https:///evil.example/?subid={click_id}",
    "//evil.example/?subid={click_id}",
    "javascript:alert(1)//{click_id}",
    "https://www.freshbox.example:99999/?subid={click_id}",
    "https://www.freshbox.example/ ?subid={click_id}",
])
def test_a_partner_url_off_the_allow_list_is_refused_at_click_time(session, account, url):
    (_, link), *_ = issue_offer_links(session, account, "meal_plan", CATALOG, NOV)
    changed = with_partner_url("freshbox", url)
    with pytest.raises(OfferNotAllowed):
        record_click(session, link.token, changed, NOV)
    assert clicks(session) == []


def test_is_allowed_url_accepts_the_domain_and_its_subdomains():
    allowed = frozenset({"freshbox.example"})
    assert is_allowed_url("https://freshbox.example/x?a=1", allowed)
    assert is_allowed_url("https://www.FreshBox.example/x", allowed)
    assert is_allowed_url("https://a.b.freshbox.example:8443/x", allowed)
    assert not is_allowed_url("https://freshbox.example.attacker.example/", allowed)
    assert not is_allowed_url("https://xfreshbox.example/", allowed)
    assert not is_allowed_url("https://freshbox.example\t/", allowed)


# --- click_to_unlock ----------------------------------------------------------------------


def test_a_click_unlocks_one_answer_within_24_hours(session, account):
    assert not unlocked(session, account, NOV)
    assert not use_unlock(session, account, NOV)
    (_, link), *_ = issue_offer_links(session, account, "meal_plan", CATALOG, NOV)
    record_click(session, link.token, CATALOG, NOV)
    assert unlocked(session, account, NOV + timedelta(minutes=1))
    assert not unlocked(session, account, NOV + timedelta(hours=24))
    assert use_unlock(session, account, NOV + timedelta(hours=1))
    assert clicks(session)[0].used_at == NOV + timedelta(hours=1)
    assert not unlocked(session, account, NOV + timedelta(hours=1))
    assert not use_unlock(session, account, NOV + timedelta(hours=1))
    # Two clicks: two answers. Another account's click unlocks nothing here.
    other = ledger.open_account(session, NOV).id
    (_, theirs), *_ = issue_offer_links(session, other, "meal_plan", CATALOG, NOV)
    record_click(session, theirs.token, CATALOG, NOV + timedelta(hours=2))
    assert not unlocked(session, account, NOV + timedelta(hours=2))
    record_click(session, link.token, CATALOG, NOV + timedelta(hours=2))
    record_click(session, link.token, CATALOG, NOV + timedelta(hours=3))
    assert use_unlock(session, account, NOV + timedelta(hours=4))
    assert use_unlock(session, account, NOV + timedelta(hours=4))
    assert not use_unlock(session, account, NOV + timedelta(hours=4))
    assert unlocked(session, other, NOV + timedelta(hours=4))
    # A click older than 24 hours has lapsed.
    assert not use_unlock(session, other, NOV + timedelta(hours=27))


# --- conversions --------------------------------------------------------------------------

DEC = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
JAN = datetime(2027, 1, 5, 9, 0, tzinfo=UTC)


def clicked(session, account_id: int) -> str:
    (_, link), *_ = issue_offer_links(session, account_id, "meal_plan", CATALOG, NOV)
    record_click(session, link.token, CATALOG, NOV)
    return clicks(session)[-1].click_id


def revenue_in(session, account_id: int, when: datetime) -> int:
    session.expire_all()
    return costs.month(session, account_id, when).revenue_affiliate_musd


def revenue_entries(session) -> list[tuple[str, int, datetime]]:
    session.expire_all()
    return [(e.idempotency_key, e.amount_musd, e.created_at)
            for e in session.scalars(select(RevenueEntry).order_by(RevenueEntry.id))]


def state(session, conversion_id: str, network: str = "awin") -> tuple:
    session.expire_all()
    row = session.scalars(select(Conversion).where(
        Conversion.network == network, Conversion.conversion_id == conversion_id)).one()
    return (row.status, row.approved_at, row.reversed_at, row.booked_musd,
            row.sale_amount_cents, row.commission_musd)


def test_a_conversion_is_revenue_of_the_clicker_once(session, account):
    click_id = clicked(session, account)
    other = ledger.open_account(session, NOV).id
    first = record_conversion(session, "awin", "conv-1", click_id, 4_500, 450, NOV)
    assert (first.changed, first.status, first.revenue_musd, first.created) == (
        True, "approved", 4_500_000, True)
    assert not record_conversion(session, "awin", "conv-1", click_id, 4_500, 450, NOV).changed
    assert not record_conversion(session, "AWIN", "conv-1", click_id, 9_999, 999, NOV).changed
    session.commit()
    (row,) = session.scalars(select(Conversion)).all()
    assert (row.network, row.conversion_id, row.click_id, row.account_id, row.partner_code,
            row.sale_amount_cents, row.commission_musd, row.status, row.approved_at,
            row.booked_musd) == (
        "awin", "conv-1", click_id, account, "freshbox", 4_500, 450 * money.MUSD_PER_CENT,
        "approved", NOV, 4_500_000)
    assert affiliate_revenue(session, account) == 4_500_000
    assert affiliate_revenue(session, other) == 0
    (entry,) = session.scalars(select(RevenueEntry)).all()
    assert (entry.account_id, entry.kind, entry.idempotency_key) == (
        account, "affiliate", "affiliate:awin:conv-1")
    # The same conversion id from another network is another conversion.
    assert record_conversion(session, "impact", "conv-1", click_id, 100, 10, NOV).changed
    assert affiliate_revenue(session, account) == 4_600_000


def test_an_unknown_click_id_is_stored_without_revenue(session, account):
    assert record_conversion(session, "awin", "c-unknown", "not-ours", 1_000, 100, NOV).changed
    assert record_conversion(session, "awin", "c-none", None, 1_000, 100, NOV).changed
    assert record_conversion(session, "awin", "c-long", "x" * 300, 1_000, 100, NOV).changed
    assert not record_conversion(session, "awin", "c-unknown", "not-ours", 1_000, 100,
                                 NOV).changed
    rows = session.scalars(select(Conversion).order_by(Conversion.id)).all()
    assert [(r.click_id, r.account_id, r.partner_code, r.status, r.booked_musd)
            for r in rows] == [
        ("not-ours", None, None, "approved", 0), (None, None, None, "approved", 0),
        (None, None, None, "approved", 0)]
    assert session.scalar(select(func.count()).select_from(RevenueEntry)) == 0
    # A zero commission is stored attributed, with no revenue entry (amounts are never 0).
    click_id = clicked(session, account)
    assert record_conversion(session, "awin", "c-zero", click_id, 1_000, 0, NOV).changed
    assert session.scalar(select(func.count()).select_from(RevenueEntry)) == 0
    # An unattributed conversion approved and reversed books nothing either.
    assert record_conversion(session, "awin", "c-none", None, -1_000, -100, DEC).changed
    assert state(session, "c-none")[:4] == ("reversed", NOV, DEC, 0)
    assert session.scalar(select(func.count()).select_from(RevenueEntry)) == 0


@pytest.mark.parametrize("network, conversion_id, sale, commission, status", [
    ("", "c1", 1, 1, None),
    ("aw in", "c1", 1, 1, None),
    ("x" * 33, "c1", 1, 1, None),
    ("awin", "", 1, 1, None),
    ("awin", "   ", 1, 1, None),
    ("awin", "c" * 101, 1, 1, None),
    ("awin", "c1", 1.5, 1, None),
    ("awin", "c1", 1, True, None),
    ("awin", "c1", 1, "1", None),
    ("awin", "c1", 1, 1, "maybe"),
    ("awin", "c1", 1, 1, "x" * 40),
    ("awin", "c1", 1, 1, 3),
])
def test_bad_conversions_are_refused(session, network, conversion_id, sale, commission,
                                     status):
    with pytest.raises(InvalidConversion):
        record_conversion(session, network, conversion_id, None, sale, commission, NOV,
                          status=status)
    assert session.scalars(select(Conversion)).all() == []


@pytest.mark.parametrize("word, sale, commission, expected", [
    (None, 100, 10, "approved"), ("", 100, 10, "approved"), ("  ", 100, 10, "approved"),
    ("pending", 100, 10, "pending"), ("Pending", 100, 10, "pending"),
    ("ON-HOLD", 100, 10, "pending"), ("extended", 100, 10, "pending"),
    ("approved", 100, 10, "approved"), ("Confirmed", 100, 10, "approved"),
    ("locked", 100, 10, "approved"), ("declined", 100, 10, "reversed"),
    ("rejected", 100, 10, "reversed"), ("reversed", 100, 10, "reversed"),
    ("approved", 100, -10, "reversed"), ("pending", -100, 10, "reversed"),
    (None, 0, -1, "reversed"),
])
def test_status_words_and_negative_amounts(word, sale, commission, expected):
    assert conversion_status(word, sale, commission) == expected
    assert expected in CONVERSION_STATES


def test_pending_then_approved_then_reversed_books_in_the_approvals_month(session, account):
    click_id = clicked(session, account)
    pending = record_conversion(session, "awin", "c-flow", click_id, 4_000, 400, NOV,
                                status="pending")
    assert (pending.changed, pending.status, pending.revenue_musd) == (True, "pending", 0)
    assert state(session, "c-flow") == ("pending", None, None, 0, 4_000, 4_000_000)
    assert revenue_entries(session) == []
    # A pending repeat changes nothing.
    assert not record_conversion(session, "awin", "c-flow", click_id, 4_000, 400, NOV,
                                 status="pending").changed

    # Approved in December, with the network's final amounts: booked in December, at the
    # approval's time, not in November when it was reported.
    approved = record_conversion(session, "awin", "c-flow", click_id, 5_000, 500, DEC,
                                 status="approved")
    assert (approved.changed, approved.status, approved.revenue_musd, approved.created) == (
        True, "approved", 5_000_000, False)
    assert state(session, "c-flow") == ("approved", DEC, None, 5_000_000, 5_000, 5_000_000)
    assert revenue_in(session, account, NOV) == 0
    assert revenue_in(session, account, DEC) == 5_000_000
    assert revenue_entries(session) == [(booking_key("awin", "c-flow"), 5_000_000, DEC)]
    # The approval again, and a late pending, are no-ops.
    for word in ("approved", "confirmed", "pending", None):
        again = record_conversion(session, "awin", "c-flow", click_id, 9_000, 900,
                                  DEC + timedelta(days=1), status=word)
        assert (again.changed, again.status, again.revenue_musd) == (False, "approved", 0)
    assert state(session, "c-flow") == ("approved", DEC, None, 5_000_000, 5_000, 5_000_000)

    # Reversed in January (a negative commission): minus what was booked, in January, once.
    reversed_ = record_conversion(session, "awin", "c-flow", click_id, -5_000, -500, JAN)
    assert (reversed_.changed, reversed_.status, reversed_.revenue_musd) == (
        True, "reversed", -5_000_000)
    assert state(session, "c-flow") == ("reversed", DEC, JAN, 5_000_000, 5_000, 5_000_000)
    for word, commission in (("reversed", 500), (None, -500), ("approved", 500),
                             ("pending", 500), ("declined", 500)):
        again = record_conversion(session, "awin", "c-flow", click_id, 5_000, commission,
                                  JAN + timedelta(days=2), status=word)
        assert (again.changed, again.status, again.revenue_musd) == (False, "reversed", 0)
    assert revenue_in(session, account, DEC) == 5_000_000
    assert revenue_in(session, account, JAN) == -5_000_000
    assert revenue_entries(session) == [(booking_key("awin", "c-flow"), 5_000_000, DEC),
                                        (reversal_key("awin", "c-flow"), -5_000_000, JAN)]
    assert state(session, "c-flow") == ("reversed", DEC, JAN, 5_000_000, 5_000, 5_000_000)


def test_a_reversal_before_the_approval_books_nothing_and_stays_reversed(session, account):
    click_id = clicked(session, account)
    # Reported straight away as reversed (a negative amount): stored reversed, no revenue.
    first = record_conversion(session, "awin", "c-early", click_id, -3_000, -300, NOV)
    assert (first.changed, first.status, first.revenue_musd, first.created) == (
        True, "reversed", 0, True)
    # Pending -> declined: no revenue either.
    record_conversion(session, "awin", "c-declined", click_id, 2_000, 200, NOV,
                      status="pending")
    assert record_conversion(session, "awin", "c-declined", click_id, 2_000, 200, NOV,
                             status="declined").status == "reversed"
    # The approvals (and pendings, and more reversals) arriving later change nothing.
    for conversion_id in ("c-early", "c-declined"):
        for word in ("approved", "pending", "reversed", None):
            late = record_conversion(session, "awin", conversion_id, click_id, 3_000, 300,
                                     DEC, status=word)
            assert (late.changed, late.status, late.revenue_musd) == (False, "reversed", 0)
    assert state(session, "c-early") == ("reversed", None, NOV, 0, 3_000, 3_000_000)
    assert state(session, "c-declined") == ("reversed", None, NOV, 0, 2_000, 2_000_000)
    assert revenue_entries(session) == []
    assert revenue_in(session, account, NOV) == revenue_in(session, account, DEC) == 0


def test_any_order_of_reports_ends_in_the_same_state(session, account):
    """pending, approved and reversed reports of one conversion, in every order and each
    twice: always reversed, net revenue 0, at most one entry each way."""
    from itertools import permutations

    click_id = clicked(session, account)
    reports = (("pending", 700), ("approved", 700), ("reversed", -700))
    for n, order in enumerate(permutations(reports)):
        conversion_id = f"c-order-{n}"
        for word, commission in order + order:
            record_conversion(session, "awin", conversion_id, click_id, 7_000, commission,
                              NOV, status=word)
        status, *_, booked, _, _ = state(session, conversion_id)
        assert status == "reversed", order
        entries = [(k, a) for k, a, _ in revenue_entries(session)
                   if k.endswith(f":{conversion_id}")]
        # Approved before the reversal: booked and taken back; otherwise nothing at all.
        approved_first = [w for w, _ in order].index("approved") < [
            w for w, _ in order].index("reversed")
        assert entries == ([(booking_key("awin", conversion_id), 7_000_000),
                            (reversal_key("awin", conversion_id), -7_000_000)]
                           if approved_first else []), order
        assert booked == (7_000_000 if approved_first else 0)
    assert revenue_in(session, account, NOV) == 0


@pytest.mark.parametrize("text, cents", [
    ("0", 0), ("12", 1200), ("12.5", 1250), ("12.50", 1250), (" 0.01 ", 1),
    ("999999999999.99", 99_999_999_999_999),
])
def test_usd_strings_become_cents(text, cents):
    assert usd_to_cents(text, "x") == cents
    assert usd_to_cents(text, "x", signed=True) == cents
    if cents:
        assert usd_to_cents("-" + text.strip(), "x", signed=True) == -cents


@pytest.mark.parametrize("value", [
    12.5, 12, None, "", "-1", "+1", "1e3", "12.505", "1,000.00", "NaN", "Infinity", ".5",
    "5.", "$5", "1" * 13, "0x10", "١٢",
])
def test_bad_usd_amounts_are_refused(value):
    with pytest.raises(InvalidConversion):
        usd_to_cents(value, "commission")


@pytest.mark.parametrize("value", ["--1", "+1", "- 1", "-1e3", "-.5", "-", -1, "1-"])
def test_bad_signed_usd_amounts_are_refused(value):
    with pytest.raises(InvalidConversion):
        usd_to_cents(value, "commission", signed=True)


@pytest.mark.backends("postgresql")
def test_concurrent_repeats_of_one_conversion_record_it_once(app, account):
    """The same postback handled by 6 workers at once: one conversion, one revenue entry."""
    engine = db.engine
    with Session(engine) as setup:
        click_id = clicked(setup, account)
        setup.commit()
    workers = 6
    barrier = threading.Barrier(workers)

    def post(_: int) -> bool:
        with Session(engine) as own:
            barrier.wait()
            stored = record_conversion(own, "awin", "conv-race", click_id, 2_000, 200, NOV)
            own.commit()
            return stored.changed

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(post, range(workers)))
    assert sorted(results) == [False] * (workers - 1) + [True]
    with Session(engine) as check:
        assert check.scalar(select(func.count()).select_from(Conversion)) == 1
        assert check.scalar(select(func.count()).select_from(RevenueEntry)) == 1
        assert costs.month(check, account, NOV).revenue_affiliate_musd == 2_000_000


@pytest.mark.backends("postgresql")
def test_concurrent_approvals_and_reversals_book_each_once(app, account):
    """A pending conversion approved by 3 workers and reversed by 3 at once: it ends
    reversed, with at most one booking and one reversal, netting 0."""
    engine = db.engine
    with Session(engine) as setup:
        click_id = clicked(setup, account)
        record_conversion(setup, "awin", "conv-moves", click_id, 2_000, 200, NOV,
                          status="pending")
        setup.commit()
    workers = 6
    barrier = threading.Barrier(workers)

    def report(i: int) -> bool:
        with Session(engine) as own:
            barrier.wait()
            commission = 200 if i % 2 else -200
            outcome = record_conversion(own, "awin", "conv-moves", click_id, 2_000,
                                        commission, DEC)
            own.commit()
            return outcome.changed

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(report, range(workers)))
    assert 1 <= sum(results) <= 2
    with Session(engine) as check:
        row = check.scalars(select(Conversion)).one()
        assert row.status == "reversed"
        amounts = sorted(check.scalars(select(RevenueEntry.amount_musd)))
        assert amounts in ([], [-2_000_000, 2_000_000])
        assert costs.month(check, account, DEC).revenue_affiliate_musd == 0


# --- CSV import ---------------------------------------------------------------------------


def test_csv_import_is_idempotent_and_reports_bad_lines(session, account):
    click_id = clicked(session, account)
    text = (
        "\ufeffconversion_id,click_id,sale_amount,commission\n"
        f"c-1,{click_id},45.00,4.50\n"
        "c-2,unknown-click,10.00,1.00\n"
        "\n"
        f"c-3,{click_id},12.50,1.2e1\n"
        f"c-4,{click_id},12.50\n"
        f",{click_id},12.50,1.25\n"
        f"c-5,{click_id},12.50,+1.25\n"
        f"c-1,{click_id},45.00,4.50\n"
    )
    added, updated, repeated, errors = import_csv(session, "awin", text, NOV)
    assert (added, updated, repeated) == (2, 0, 1)
    assert len(errors) == 4
    assert errors[0].startswith("line 5: commission")
    assert errors[1].startswith("line 6: 3 fields")
    assert errors[2].startswith("line 7: conversion_id")
    assert errors[3].startswith("line 8: commission")
    session.commit()
    assert sorted(session.scalars(select(Conversion.conversion_id))) == ["c-1", "c-2"]
    assert affiliate_revenue(session, account) == 450 * money.MUSD_PER_CENT

    again = import_csv(session, "awin", text, NOV)
    assert (again.added, again.updated, again.repeated, len(again.errors)) == (0, 0, 3, 4)
    assert affiliate_revenue(session, account) == 450 * money.MUSD_PER_CENT


def test_csv_columns_may_come_in_any_order_with_extras(session, account):
    click_id = clicked(session, account)
    text = ("Commission,Sale_Amount,status,click_id,conversion_id,Region\r\n"
            f"2.00,20.00,approved,{click_id},c-9,EU\r\n")
    assert tuple(import_csv(session, "cj", text, NOV)) == (1, 0, 0, [])
    assert affiliate_revenue(session, account) == 200 * money.MUSD_PER_CENT


def test_csv_reports_move_conversions_pending_approved_reversed(session, account):
    click_id = clicked(session, account)
    header = "conversion_id,click_id,sale_amount,commission,status\n"
    november = (header + f"c-a,{click_id},40.00,4.00,pending\n"
                f"c-b,{click_id},10.00,1.00,pending\n"
                f"c-c,{click_id},30.00,-3.00,\n"
                f"c-d,{click_id},20.00,2.00,maybe\n")
    assert tuple(import_csv(session, "awin", november, NOV)) == (
        3, 0, 0, ["line 5: status: 'maybe' is not a status we know (pending, approved, "
                  "declined, reversed, or an amount's sign)"])
    assert revenue_entries(session) == []
    december = (header + f"c-a,{click_id},40.00,4.00,approved\n"
                f"c-b,{click_id},10.00,1.00,declined\n"
                f"c-c,{click_id},30.00,3.00,approved\n"
                f"c-a,{click_id},40.00,4.00,approved\n")
    assert tuple(import_csv(session, "awin", december, DEC)) == (0, 2, 2, [])
    assert revenue_in(session, account, NOV) == 0
    assert revenue_in(session, account, DEC) == 4_000_000
    january = (header + f"c-a,{click_id},-40.00,-4.00,reversed\n"
               f"c-a,{click_id},40.00,4.00,pending\n"
               f"c-b,{click_id},10.00,1.00,approved\n")
    assert tuple(import_csv(session, "awin", january, JAN)) == (0, 1, 2, [])
    assert tuple(import_csv(session, "awin", january, JAN)) == (0, 0, 3, [])
    assert revenue_in(session, account, DEC) == 4_000_000
    assert revenue_in(session, account, JAN) == -4_000_000
    assert [state(session, c)[:4] for c in ("c-a", "c-b", "c-c")] == [
        ("reversed", DEC, JAN, 4_000_000), ("reversed", None, DEC, 0),
        ("reversed", None, NOV, 0)]
    assert [k for k, _, _ in revenue_entries(session)] == [booking_key("awin", "c-a"),
                                                          reversal_key("awin", "c-a")]


@pytest.mark.parametrize("text", ["", "\n\n", "conversion_id,click_id,sale_amount\nc,x,1,1\n"])
def test_csv_without_the_header_imports_nothing(session, text):
    with pytest.raises(InvalidConversion):
        import_csv(session, "awin", text, NOV)
    assert session.scalars(select(Conversion)).all() == []
