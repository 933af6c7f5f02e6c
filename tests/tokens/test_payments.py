"""`tokens.payments` called directly: pay links (issue, reuse, expiry, lookup errors), the open
checkout of a link, the premium entitlement of subscriptions (with the grace period of a past
due one) and the per-account checkout list. No HTTP: tests/app/test_pay_and_health.py covers
the pay link pages.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tokens import ledger, payments
from tokens.errors import PayLinkExpired, PayLinkNotFound
from tokens.payments import Checkout, Subscription

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
TTL = 72 * 3600
GRACE_DAYS = 3


def checkout(session, account_id: int, *, link=None, status: str = "open",
             expires_at: datetime | None = None, external_id: str) -> Checkout:
    row = Checkout(pay_link_id=link.id if link is not None else None, account_id=account_id,
                   provider="sandbox", mode="payment", item_code="starter", amount_cents=500,
                   currency="usd", tokens=100, bonus_tokens=20, external_id=external_id,
                   url=f"https://pay.example/{external_id}", status=status, created_at=NOW,
                   expires_at=expires_at)
    session.add(row)
    session.flush()
    return row


def subscription(session, account_id: int, status: str, *, external_id: str,
                 past_due_since: datetime | None = None) -> Subscription:
    row = Subscription(account_id=account_id, provider="stripe", external_id=external_id,
                       status=status, past_due_since=past_due_since, updated_at=NOW)
    session.add(row)
    session.flush()
    return row


def test_a_new_link_is_random_and_lasts_its_ttl(session):
    account = ledger.open_account(session, NOW)
    link = payments.issue_pay_link(session, account.id, "starter", ttl_seconds=TTL, now=NOW)
    other = ledger.open_account(session, NOW)
    theirs = payments.issue_pay_link(session, other.id, "starter", ttl_seconds=TTL, now=NOW)
    session.commit()
    assert link.expires_at == NOW + timedelta(seconds=TTL)
    assert (link.purpose, link.pack_code, link.account_id) == ("pack", "starter", account.id)
    assert len(link.token) >= 40 and link.token != theirs.token  # 256 random bits, url-safe


def test_a_fresh_link_is_reused_per_purpose_and_pack(session):
    account = ledger.open_account(session, NOW)
    first = payments.issue_pay_link(session, account.id, "starter", ttl_seconds=TTL, now=NOW)
    later = NOW + timedelta(seconds=TTL // 2 - 60)  # still valid for more than half its life
    assert payments.issue_pay_link(session, account.id, "starter", ttl_seconds=TTL,
                                   now=later).id == first.id
    # Another pack, or the same pack bought for auto top-up, is another link.
    other_pack = payments.issue_pay_link(session, account.id, "family", ttl_seconds=TTL,
                                         now=NOW)
    topup = payments.issue_pay_link(session, account.id, "starter", ttl_seconds=TTL,
                                    purpose="auto_topup", now=NOW)
    assert len({first.id, other_pack.id, topup.id}) == 3
    assert topup.purpose == "auto_topup"


def test_find_pay_link_tells_unknown_from_expired(session):
    account = ledger.open_account(session, NOW)
    link = payments.issue_pay_link(session, account.id, "starter", ttl_seconds=3600, now=NOW)
    session.commit()
    assert payments.find_pay_link(session, link.token, NOW + timedelta(minutes=59)).id == link.id
    with pytest.raises(PayLinkExpired):
        payments.find_pay_link(session, link.token, NOW + timedelta(hours=1))  # at the expiry
    with pytest.raises(PayLinkNotFound):
        payments.find_pay_link(session, link.token + "x", NOW)
    with pytest.raises(PayLinkNotFound):
        payments.find_pay_link(session, "", NOW)


def test_the_open_checkout_of_a_link_is_the_newest_payable_one(session):
    account = ledger.open_account(session, NOW)
    link = payments.issue_pay_link(session, account.id, "starter", ttl_seconds=TTL, now=NOW)
    assert payments.open_checkout_for(session, link, NOW) is None
    checkout(session, account.id, link=link, external_id="cs_old",
             expires_at=NOW + timedelta(hours=1))
    newest = checkout(session, account.id, link=link, external_id="cs_new",
                      expires_at=NOW + timedelta(hours=1))
    checkout(session, account.id, link=link, external_id="cs_done", status="completed")
    checkout(session, account.id, external_id="cs_unlinked")  # another link's (none)
    assert payments.open_checkout_for(session, link, NOW).id == newest.id
    # Once they lapse at the provider, none can be paid: the link opens a new one.
    assert payments.open_checkout_for(session, link, NOW + timedelta(hours=1)) is None
    # A link not stored yet has no checkout.
    assert payments.open_checkout_for(session, payments.PayLink(), NOW) is None


PREMIUM_CASES = [  # status, past due since (days ago), premium, unpaid
    ("active", None, True, False),
    ("trialing", None, True, False),
    ("past_due", 1, True, True),     # within the grace period
    ("past_due", 3, False, True),    # the grace period has ended at this instant
    ("past_due", None, False, True),  # past due, never seen going past due: no grace known
    ("unpaid", None, False, True),
    ("canceled", None, False, False),
    ("incomplete", None, False, False),
]


def test_premium_follows_the_subscription_status(session):
    for status, since_days, premium, unpaid in PREMIUM_CASES:
        account = ledger.open_account(session, NOW)
        since = NOW - timedelta(days=since_days) if since_days is not None else None
        row = subscription(session, account.id, status, external_id=f"sub_{account.id}",
                           past_due_since=since)
        case = (status, since_days)
        assert row.premium(NOW, GRACE_DAYS) is premium, case
        # The SQL rule (one EXISTS) agrees with the Python one.
        assert payments.has_premium(session, account.id, NOW, GRACE_DAYS) is premium, case
        assert payments.has_unpaid_subscription(session, account.id) is unpaid, case


def test_premium_is_per_account_and_any_subscription_gives_it(session):
    ana = ledger.open_account(session, NOW).id
    ben = ledger.open_account(session, NOW).id
    subscription(session, ana, "canceled", external_id="sub_ana_old")
    assert not payments.has_premium(session, ana, NOW, GRACE_DAYS)
    subscription(session, ana, "active", external_id="sub_ana_new")
    assert payments.has_premium(session, ana, NOW, GRACE_DAYS)
    assert not payments.has_premium(session, ben, NOW, GRACE_DAYS)
    assert not payments.has_unpaid_subscription(session, ben)


def test_checkouts_of_lists_an_accounts_checkouts_newest_first(session):
    ana = ledger.open_account(session, NOW).id
    ben = ledger.open_account(session, NOW).id
    first = checkout(session, ana, external_id="cs_a1")
    checkout(session, ben, external_id="cs_b1")
    second = checkout(session, ana, external_id="cs_a2", status="completed")
    assert [c.id for c in payments.checkouts_of(session, ana)] == [second.id, first.id]
    assert second.purchase_key == "checkout:cs_a2"
    assert payments.checkouts_of(session, ledger.open_account(session, NOW).id) == []
