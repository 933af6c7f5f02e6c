"""What the account page shows (`tokens.statement`) and its links and once-only actions
(`tokens.account_links`), as worked examples in plain words, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tokens import account_links, ledger, levels, statement
from tokens.catalog import load_catalog
from tokens.errors import AccountLinkExpired, AccountLinkNotFound
from tokens.payment_events import receipt_url
from tokens.payments import Checkout, Invoice, ProviderPayment, Subscription

CATALOG = load_catalog()
NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
RECEIPT = "https://invoice.stripe.com/i/acct_1/test_abc"


@pytest.fixture
def ana(session) -> int:
    """Ana: 100 free tokens in November."""
    account_id = ledger.open_account(session, NOV).id
    ledger.grant_monthly_allowance(session, account_id, 100, NOV)
    session.commit()
    return account_id


def answer(session, account_id: int, intent: str, tokens: int, sid: str,
           now: datetime = NOV) -> None:
    """One answered request, as the router settles it (hold, then capture)."""
    placed = ledger.hold(session, account_id, tokens, key=f"hold:{sid}", memo=intent, now=now)
    ledger.capture(session, placed.hold_id, key=f"debit:{sid}", now=now)


def test_ana_asks_twice_one_reply_is_lost_and_she_buys_a_pack(session, ana):
    answer(session, ana, "meal_plan", 5, "SM1")
    answer(session, ana, "recipe_search", 2, "SM2", NOV + timedelta(minutes=1))
    ledger.reverse_debit(session, "debit:SM2", key="reversal:SM2", memo="reply not delivered",
                        now=NOV + timedelta(minutes=2))
    session.add(Checkout(
        pay_link_id=None, account_id=ana, provider="sandbox", mode="payment",
        item_code="starter", amount_cents=500, currency="usd", tokens=100, bonus_tokens=20,
        external_id="auto_topup:1:1", url="", status="completed", refunded_cents=100,
        created_at=NOV, completed_at=NOV + timedelta(minutes=3)))
    ledger.purchase(session, ana, 100, 20, key="checkout:auto_topup:1:1",
                    now=NOV + timedelta(minutes=3))
    session.commit()

    s = statement.statement(session, ana, CATALOG, NOV + timedelta(minutes=4))
    assert s.available == 100 - 5 + 120 and s.held == 0
    assert [(b.bucket, b.tokens, b.expires_at) for b in s.buckets] == [
        ("free", 95, DEC), ("bonus", 20, None), ("paid", 100, None)]
    assert s.free_renews_at == DEC and s.month == "2026-11"
    # The recipe's tokens came back: it counts as an answer of 0 tokens.
    assert [(u.intent, u.answers, u.tokens) for u in s.usage] == [
        ("meal_plan", 1, 5), ("recipe_search", 1, 0)]
    assert [(c.kind, c.intent, c.tokens) for c in s.charges] == [
        ("reversal", "recipe_search", 2), ("debit", "recipe_search", 2), ("debit", "meal_plan", 5)]
    (bought,) = s.purchases
    assert (bought.kind, bought.amount_cents, bought.tokens, bought.refunded_cents) == (
        "auto_topup", 500, 120, 100)
    assert s.premium == statement.Premium(None, False, None, None, False)
    assert not s.auto_topup.enabled and s.auto_topup.pack_code == CATALOG.auto_topup_pack().code
    assert s.level == levels.NORMAL  # bought tokens left: paid service is never degraded


def test_a_premium_month_shows_its_receipt_and_its_renewal(session, ana):
    period_end = NOV + timedelta(days=30)
    session.add(Subscription(account_id=ana, provider="stripe", external_id="sub_1",
                             customer_id="cus_1", status="active",
                             current_period_end=period_end, updated_at=NOV))
    invoice = Invoice(provider="stripe", external_id="in_1", account_id=ana,
                      subscription_id="sub_1", amount_cents=500, currency="usd", tokens=200,
                      paid_at=NOV, receipt_url=RECEIPT)
    session.add(invoice)
    session.flush()
    session.add(ProviderPayment(provider="stripe", external_id="pi_1", status="applied",
                                invoice_id=invoice.id, refunded_cents=50))
    session.commit()
    s = statement.statement(session, ana, CATALOG, NOV)
    assert s.premium == statement.Premium("active", True, period_end, None, True)
    (month,) = s.purchases
    assert (month.kind, month.receipt_url, month.refunded_cents) == ("premium", RECEIPT, 50)


def test_premium_ending_or_past_due_shows_its_end(session, ana):
    row = Subscription(account_id=ana, provider="stripe", external_id="sub_1",
                       customer_id="cus_1", status="active", cancel_at_period_end=True,
                       current_period_end=DEC, updated_at=NOV)
    session.add(row)
    session.commit()
    assert statement.premium_of(session, ana, CATALOG, NOV).ends_at == DEC
    row.status, row.cancel_at_period_end, row.past_due_since = "past_due", False, NOV
    session.commit()
    premium = statement.premium_of(session, ana, CATALOG, NOV)
    assert premium.active and premium.ends_at == NOV + timedelta(days=CATALOG.premium.grace_days)


def test_a_free_user_past_the_cutoff_is_at_payment_required(session, ana):
    from tokens import costs

    costs.record_llm_estimate(session, ana, CATALOG.levels.payment_required_musd, "gpt-4o-mini",
                              key="llm:big", now=NOV)
    session.commit()
    assert statement.statement(session, ana, CATALOG, NOV).level == levels.PAYMENT_REQUIRED


def test_receipt_links_are_https_only():
    assert receipt_url(RECEIPT) == RECEIPT
    assert receipt_url("javascript:alert(1)") is None
    assert receipt_url("http://invoice.stripe.com/i/x") is None
    assert receipt_url("https://a b") is None and receipt_url(None) is None


def test_a_link_opens_for_15_minutes_and_is_stored_only_as_a_hash(session, ana):
    issued = account_links.issue_link(session, ana, NOV)
    session.commit()
    stored = session.scalars(select(account_links.AccountLink)).one()
    assert stored.token_hash == account_links.token_hash(issued.token) != issued.token
    assert issued.expires_at == NOV + timedelta(minutes=15)
    assert account_links.open_link(session, issued.token, NOV).account_id == ana
    assert account_links.open_link(session, issued.token, NOV + timedelta(minutes=14)
                                   ).opened_at == NOV + timedelta(minutes=14)
    with pytest.raises(AccountLinkExpired):
        account_links.open_link(session, issued.token, NOV + timedelta(minutes=15))
    with pytest.raises(AccountLinkNotFound):
        account_links.open_link(session, "A" * 43, NOV)
    with pytest.raises(AccountLinkNotFound):
        account_links.open_link(session, "../etc", NOV)
    assert account_links.forget_links(session, ana) == 1


def test_an_action_is_claimed_once_per_form_key(session, ana):
    other = ledger.open_account(session, NOV).id
    key = account_links.new_form_key()
    assert account_links.claim_action(session, ana, key, "buy", NOV).first
    account_links.finish_action(session, key, "/pay/abc")
    session.commit()
    again = account_links.claim_action(session, ana, key, "buy", NOV)
    assert not again.first and again.result == "/pay/abc"
    with pytest.raises(ValueError):
        account_links.claim_action(session, other, key, "buy", NOV)  # another's form
    with pytest.raises(ValueError):
        account_links.claim_action(session, ana, "nope", "buy", NOV)
    with pytest.raises(ValueError):
        account_links.claim_action(session, ana, account_links.new_form_key(), "steal", NOV)
