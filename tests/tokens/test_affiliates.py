"""Affiliate offers, clicks and conversions (economy.md, "Affiliate gating"), on SQLite and
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
from tokens import costs, ledger
from tokens.affiliates import (
    OFFER_LINK_TTL,
    Click,
    Conversion,
    InvalidConversion,
    OfferNotAllowed,
    UnknownOfferLink,
    import_csv,
    is_allowed_url,
    issue_offer_links,
    offer_url,
    record_click,
    record_conversion,
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


# --- clicks -------------------------------------------------------------------------------


def test_each_click_is_one_row_and_goes_to_the_partner_with_our_click_id(session, account):
    (partner, link), *_ = issue_offer_links(session, account, "meal_plan", CATALOG, NOV)
    assert partner.code == "freshbox"
    urls = [record_click(session, link.token, CATALOG, NOV + timedelta(minutes=i))
            for i in range(2)]
    rows = clicks(session)
    assert len(rows) == 2
    assert rows[0].click_id != rows[1].click_id
    for url, row in zip(urls, rows, strict=True):
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.path) == ("https", "www.freshbox.example",
                                                              "/plans")
        assert parse_qs(parts.query) == {"ref": ["nutribot"], "subid": [row.click_id]}
        assert (row.account_id, row.offer_link_id, row.partner_code) == (account, link.id,
                                                                         "freshbox")
        assert row.used_at is None


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


def clicked(session, account_id: int) -> str:
    (_, link), *_ = issue_offer_links(session, account_id, "meal_plan", CATALOG, NOV)
    record_click(session, link.token, CATALOG, NOV)
    return clicks(session)[-1].click_id


def test_a_conversion_is_revenue_of_the_clicker_once(session, account):
    click_id = clicked(session, account)
    other = ledger.open_account(session, NOV).id
    assert record_conversion(session, "awin", "conv-1", click_id, 4_500, 450, NOV)
    assert not record_conversion(session, "awin", "conv-1", click_id, 4_500, 450, NOV)
    assert not record_conversion(session, "AWIN", "conv-1", click_id, 9_999, 999, NOV)
    session.commit()
    (row,) = session.scalars(select(Conversion)).all()
    assert (row.network, row.conversion_id, row.click_id, row.account_id, row.partner_code,
            row.sale_amount_cents, row.commission_musd, row.status) == (
        "awin", "conv-1", click_id, account, "freshbox", 4_500, 450 * costs.MUSD_PER_CENT,
        "attributed")
    assert affiliate_revenue(session, account) == 4_500_000
    assert affiliate_revenue(session, other) == 0
    (entry,) = session.scalars(select(RevenueEntry)).all()
    assert (entry.account_id, entry.kind, entry.idempotency_key) == (
        account, "affiliate", "affiliate:awin:conv-1")
    # The same conversion id from another network is another conversion.
    assert record_conversion(session, "impact", "conv-1", click_id, 100, 10, NOV)
    assert affiliate_revenue(session, account) == 4_600_000


def test_an_unknown_click_id_is_stored_without_revenue(session, account):
    assert record_conversion(session, "awin", "c-unknown", "not-ours", 1_000, 100, NOV)
    assert record_conversion(session, "awin", "c-none", None, 1_000, 100, NOV)
    assert record_conversion(session, "awin", "c-long", "x" * 300, 1_000, 100, NOV)
    assert not record_conversion(session, "awin", "c-unknown", "not-ours", 1_000, 100, NOV)
    rows = session.scalars(select(Conversion).order_by(Conversion.id)).all()
    assert [(r.click_id, r.account_id, r.status) for r in rows] == [
        ("not-ours", None, "unattributed"), (None, None, "unattributed"),
        (None, None, "unattributed")]
    assert session.scalar(select(func.count()).select_from(RevenueEntry)) == 0
    # A zero commission is stored attributed, with no revenue entry (amounts are never 0).
    click_id = clicked(session, account)
    assert record_conversion(session, "awin", "c-zero", click_id, 1_000, 0, NOV)
    assert session.scalar(select(func.count()).select_from(RevenueEntry)) == 0


@pytest.mark.parametrize("network, conversion_id, sale, commission", [
    ("", "c1", 1, 1),
    ("aw in", "c1", 1, 1),
    ("x" * 33, "c1", 1, 1),
    ("awin", "", 1, 1),
    ("awin", "   ", 1, 1),
    ("awin", "c" * 101, 1, 1),
    ("awin", "c1", -1, 1),
    ("awin", "c1", 1, -1),
    ("awin", "c1", 1.5, 1),
    ("awin", "c1", 1, True),
])
def test_bad_conversions_are_refused(session, network, conversion_id, sale, commission):
    with pytest.raises(InvalidConversion):
        record_conversion(session, network, conversion_id, None, sale, commission, NOV)
    assert session.scalars(select(Conversion)).all() == []


@pytest.mark.parametrize("text, cents", [
    ("0", 0), ("12", 1200), ("12.5", 1250), ("12.50", 1250), (" 0.01 ", 1),
    ("999999999999.99", 99_999_999_999_999),
])
def test_usd_strings_become_cents(text, cents):
    assert usd_to_cents(text, "x") == cents


@pytest.mark.parametrize("value", [
    12.5, 12, None, "", "-1", "+1", "1e3", "12.505", "1,000.00", "NaN", "Infinity", ".5",
    "5.", "$5", "1" * 13, "0x10", "١٢",
])
def test_bad_usd_amounts_are_refused(value):
    with pytest.raises(InvalidConversion):
        usd_to_cents(value, "commission")


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
            return stored

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(post, range(workers)))
    assert sorted(results) == [False] * (workers - 1) + [True]
    with Session(engine) as check:
        assert check.scalar(select(func.count()).select_from(Conversion)) == 1
        assert check.scalar(select(func.count()).select_from(RevenueEntry)) == 1
        assert costs.month(check, account, NOV).revenue_affiliate_musd == 2_000_000


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
        f"c-5,{click_id},12.50,-1.25\n"
        f"c-1,{click_id},45.00,4.50\n"
    )
    added, repeated, errors = import_csv(session, "awin", text, NOV)
    assert (added, repeated) == (2, 1)
    assert len(errors) == 4
    assert errors[0].startswith("line 5: commission")
    assert errors[1].startswith("line 6: 3 fields")
    assert errors[2].startswith("line 7: conversion_id")
    assert errors[3].startswith("line 8: commission")
    session.commit()
    assert sorted(session.scalars(select(Conversion.conversion_id))) == ["c-1", "c-2"]
    assert affiliate_revenue(session, account) == 450 * costs.MUSD_PER_CENT

    again = import_csv(session, "awin", text, NOV)
    assert (again.added, again.repeated, len(again.errors)) == (0, 3, 4)
    assert affiliate_revenue(session, account) == 450 * costs.MUSD_PER_CENT


def test_csv_columns_may_come_in_any_order_with_extras(session, account):
    click_id = clicked(session, account)
    text = ("Commission,Sale_Amount,status,click_id,conversion_id\r\n"
            f"2.00,20.00,approved,{click_id},c-9\r\n")
    assert tuple(import_csv(session, "cj", text, NOV)) == (1, 0, [])
    assert affiliate_revenue(session, account) == 200 * costs.MUSD_PER_CENT


@pytest.mark.parametrize("text", ["", "\n\n", "conversion_id,click_id,sale_amount\nc,x,1,1\n"])
def test_csv_without_the_header_imports_nothing(session, text):
    with pytest.raises(InvalidConversion):
        import_csv(session, "awin", text, NOV)
    assert session.scalars(select(Conversion)).all() == []
