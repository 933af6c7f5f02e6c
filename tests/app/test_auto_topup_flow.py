"""Low-balance alerts and auto top-up (issue #16, points 2 and 3), end to end on the embedded
defaults: text AUTO ON, pay once on the sandbox with the "save my card" box ticked, spend
under the threshold, and the saved card buys the pack once per crossing; a declining card
turns it off and says so; without auto top-up, one alert per crossing and day, with the link.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask import Flask
from sqlalchemy import func, select

from app.extensions import bot_settings, db
from bot.models import Contact
from testing.deployment import PUBLIC_BASE_URL, post_signed
from testing.payloads import sms
from tests.tokens.ledger_checks import assert_consistent
from tokens import auto_topup, costs, ledger
from tokens.payments import Checkout

PHONE = "+16505558893"


def text_of(response) -> str:
    return response.get_data(as_text=True)


def link_in(text: str) -> str:
    match = re.search(re.escape(PUBLIC_BASE_URL) + r"(/pay/[A-Za-z0-9_-]+)", text)
    assert match, text
    return match.group(1)


def account(session) -> int:
    return session.scalar(select(Contact.account_id).where(Contact.address == PHONE))


def set_available(session, account_id: int, tokens: int) -> None:
    """Bring the available balance to `tokens` with an operator's correction."""
    now = datetime.now(UTC)
    available = ledger.balance(session, account_id, now).available
    ledger.adjust(session, account_id, tokens - available, key=f"test:{tokens}:{available}",
                  reason="test", actor="test", now=now)
    session.commit()


def turn_auto_topup_on(client, session) -> int:
    """AUTO ON, open its link, pay on the sandbox with the box ticked; the account id."""
    reply = text_of(post_signed(client, sms("AUTO ON")))
    assert "Auto top-up buys 120 tokens ($5.00)" in reply and "fewer than 5 tokens" in reply
    checkout_url = client.get(link_in(reply)).headers["Location"]
    page = text_of(client.get(checkout_url))
    assert 'name="save_card" value="1" checked' in page  # AUTO ON's link ticks the box
    session_id = checkout_url.rsplit("/", 1)[1]
    assert client.post(f"/sandbox/checkout/{session_id}/pay",
                       data={"save_card": "1"}).status_code == 303
    account_id = account(session)
    assert auto_topup.status(session, account_id, datetime.now(UTC)).state == "on"
    return account_id


def test_auto_on_saves_the_card_and_a_crossing_buys_the_pack_once(client, session):
    account_id = turn_auto_topup_on(client, session)
    assert ledger.balance(session, account_id).available == 220  # the pack bought once
    set_available(session, account_id, 7)
    answer = text_of(post_signed(client, sms("meal plan")))  # 5 tokens: 7 -> 2
    assert "Day 1" in answer or "Breakfast" in answer
    # The saved card bought the pack (120) after the answer's commit.
    assert ledger.balance(session, account_id).available == 2 + 120
    attempts = session.scalars(select(Checkout).where(
        Checkout.external_id.like("auto_topup:%"))).all()
    assert [(c.status, c.amount_cents) for c in attempts] == [("completed", 500)]
    assert costs.month(session, account_id).revenue_pack_musd == 10_000_000
    # Still above the threshold: nothing more.
    post_signed(client, sms("meal plan"))
    assert session.scalar(select(func.count()).select_from(Checkout).where(
        Checkout.external_id.like("auto_topup:%"))) == 1
    assert_consistent(session, account_id)
    # The pack took the balance back over the threshold: the next crossing buys again.
    set_available(session, account_id, 6)
    post_signed(client, sms("meal plan"))  # 6 -> 1
    assert ledger.balance(session, account_id).available == 1 + 120
    assert session.scalar(select(func.count()).select_from(Checkout).where(
        Checkout.external_id.like("auto_topup:%"), Checkout.status == "completed")) == 2
    # AUTO OFF stops it: the next crossing only alerts.
    assert "Auto top-up is off" in text_of(post_signed(client, sms("AUTO OFF")))
    set_available(session, account_id, 6)
    reply = text_of(post_signed(client, sms("meal plan")))
    assert "You have 1 tokens left" in reply and "/pay/" in reply
    assert ledger.balance(session, account_id).available == 1


def test_a_declining_card_turns_auto_topup_off_and_gives_a_pay_link(app: Flask, client,
                                                                   session):
    account_id = turn_auto_topup_on(client, session)
    provider = app.extensions["payment_provider"]
    row = session.get(auto_topup.AutoTopup, account_id)
    provider.declining_cards.add(row.payment_method_id)
    set_available(session, account_id, 6)
    post_signed(client, sms("meal plan"))
    state = auto_topup.status(session, account_id, datetime.now(UTC))
    assert state.state == "off" and state.last_failure == "declined"
    assert ledger.balance(session, account_id).available == 1  # nothing bought
    failed = session.scalar(select(Checkout).where(Checkout.external_id.like("auto_topup:%")))
    assert failed.status == "failed"


def test_without_auto_topup_one_alert_per_crossing_and_day(client, session):
    post_signed(client, sms("BALANCE"))
    account_id = account(session)
    set_available(session, account_id, 12)
    first = text_of(post_signed(client, sms("meal plan")))  # 12 -> 7: above the threshold
    assert "tokens left" not in first
    alert = text_of(post_signed(client, sms("meal plan")))  # 7 -> 2: crosses under 5
    assert "You have 2 tokens left. Text BUY for 120 more ($5.00)" in alert
    assert "/pay/" in alert
    set_available(session, account_id, 6)
    again = text_of(post_signed(client, sms("meal plan")))  # crosses again, same day
    assert "tokens left" not in again and "used all your tokens" not in again


def test_auto_topup_without_a_provider_says_it_is_not_available(app: Flask, client):
    import dataclasses

    settings = bot_settings(app)
    app.extensions["bot_settings"] = dataclasses.replace(settings, payments=None)
    try:
        assert "not available" in text_of(post_signed(client, sms("AUTO ON")))
    finally:
        app.extensions["bot_settings"] = settings
    assert db.session.scalar(select(func.count()).select_from(auto_topup.AutoTopup)) == 0
