"""The embedded default's payments: the sandbox checkout, end to end, as a new user lives it.

Text BUY, open the pay link, pay on the sandbox page (which says no money moves), and the next
BALANCE shows 120 more tokens. The Pay button runs the Stripe webhook's fulfilment.
"""

from __future__ import annotations

import re

from sqlalchemy import select

from bot.models import Contact
from testing.deployment import PUBLIC_BASE_URL, post_signed
from testing.payloads import sms
from tests.tokens.ledger_checks import assert_consistent
from tokens import costs, ledger
from tokens.payments import Checkout, PaymentEvent, Subscription

PHONE = "+16505558893"


def link_in(response) -> str:
    """The pay link's path in a TwiML reply."""
    match = re.search(re.escape(PUBLIC_BASE_URL) + r"(/pay/[A-Za-z0-9_-]+)",
                      response.get_data(as_text=True))
    assert match, response.get_data(as_text=True)
    return match.group(1)


def balance_reply(client) -> str:
    return post_signed(client, sms("BALANCE")).get_data(as_text=True)


def test_buy_pay_on_the_sandbox_and_balance_shows_120_more(client, session):
    assert "You have 100 tokens" in balance_reply(client)
    pay_path = link_in(post_signed(client, sms("BUY")))

    opened = client.get(pay_path)
    assert opened.status_code == 303
    checkout_url = opened.headers["Location"]
    assert checkout_url.startswith(f"{PUBLIC_BASE_URL}/sandbox/checkout/cs_sandbox_")
    page = client.get(checkout_url).get_data(as_text=True)
    assert "no money moves" in page and "$5.00" in page and "120 tokens" in page
    # A second click reuses the open checkout.
    assert client.get(pay_path).headers["Location"] == checkout_url

    session_id = checkout_url.rsplit("/", 1)[1]
    paid = client.post(f"/sandbox/checkout/{session_id}/pay")
    assert paid.status_code == 303 and paid.headers["Location"].endswith(f"{pay_path}/done")
    assert "payment went through" in client.get(f"{pay_path}/done").get_data(as_text=True)

    assert "You have 220 tokens" in balance_reply(client)
    contact = session.scalar(select(Contact).where(Contact.address == PHONE))
    account = contact.account_id
    balance = ledger.balance(session, account)
    assert balance.by_bucket == {"free": 100, "bonus": 20, "paid": 100}
    checkout = session.scalar(select(Checkout))
    assert (checkout.status, checkout.amount_cents, checkout.tokens, checkout.bonus_tokens) == (
        "completed", 500, 100, 20)
    assert costs.month(session, account).revenue_pack_musd == 5_000_000  # $5.00
    assert_consistent(session, account)

    # Paying again (a double submit) credits nothing more.
    client.post(f"/sandbox/checkout/{session_id}/pay")
    assert ledger.balance(session, account).posted == 220
    assert session.scalar(select(PaymentEvent.outcome)) == "credited 120 tokens"


def test_buy_premium_subscribes_and_grants_the_monthly_tokens(client, session, runner):
    reply = post_signed(client, sms("BUY PREMIUM"))
    assert "full answers and 120 tokens each month, $5.00 a month" in reply.get_data(as_text=True)
    checkout_url = client.get(link_in(reply)).headers["Location"]
    assert "$5.00 a month" in client.get(checkout_url).get_data(as_text=True)
    client.post(f"/sandbox/checkout/{checkout_url.rsplit('/', 1)[1]}/pay")

    account = session.scalar(select(Contact.account_id).where(Contact.address == PHONE))
    subscription = session.scalar(select(Subscription))
    assert subscription.account_id == account and subscription.status == "active"
    balance = ledger.balance(session, account)
    assert balance.by_bucket == {"free": 100, "subscription": 120}
    assert costs.month(session, account).revenue_subscription_musd == 5_000_000
    result = runner.invoke(args=["tokens", "purchases", PHONE])
    assert result.exit_code == 0, result.output
    assert "premium subscription" in result.output and "active, premium" in result.output


def test_purchases_lists_what_a_person_bought(client, session, runner):
    pay_path = link_in(post_signed(client, sms("BUY")))
    checkout_url = client.get(pay_path).headers["Location"]
    client.post(f"/sandbox/checkout/{checkout_url.rsplit('/', 1)[1]}/pay")
    result = runner.invoke(args=["tokens", "purchases", PHONE])
    assert result.exit_code == 0, result.output
    assert "starter" in result.output and "5.00 USD" in result.output
    assert "completed" in result.output and "100 + 20 bonus tokens" in result.output
    assert "+16505558893" not in result.output  # masked


def test_the_sandbox_is_refused_in_production(make_app):
    from app.extensions import db

    application = make_app(APP_ENV="production", SECRET_KEY="production-secret-" + "x" * 32)
    with application.app_context():
        client = application.test_client()
        assert client.get("/sandbox/checkout/cs_sandbox_x").status_code == 404
        assert client.post("/sandbox/checkout/cs_sandbox_x/pay").status_code == 404
        response = post_signed(client, sms("BUY"))
        page = client.get(link_in(response))
        assert page.status_code == 503 and "not enabled" in page.get_data(as_text=True)
        db.session.remove()
        db.engine.dispose()


def test_sandbox_premium_with_twilio_configured_tells_the_person(make_app, twilio_api):
    """Applying the first event sends a notice (ending the request's session objects); the
    sandbox still applies the first invoice."""
    from app.extensions import db
    from testing.deployment import ACCOUNT_SID, SMS_FROM

    application = make_app(TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_SMS_FROM=SMS_FROM,
                           TWILIO_API_BASE=twilio_api.base_url)
    with application.app_context():
        client = application.test_client()
        checkout_url = client.get(link_in(post_signed(client, sms("BUY PREMIUM")))).headers[
            "Location"]
        paid = client.post(f"/sandbox/checkout/{checkout_url.rsplit('/', 1)[1]}/pay")
        assert paid.status_code == 303
        account = db.session.scalar(select(Contact.account_id).where(Contact.address == PHONE))
        assert ledger.balance(db.session, account).by_bucket == {"free": 100,
                                                                 "subscription": 120}
        assert any("Welcome to Premium" in sent["Body"] for sent in twilio_api.accepted)
        db.session.remove()
        db.engine.dispose()
