"""`flask --app wsgi chat`: the terminal talks through the same pipeline."""

from __future__ import annotations

from sqlalchemy import select

from bot.models import Contact, Message


def test_chat_meal_plan_then_balance(runner, session):
    result = runner.invoke(args=["chat", "--from", "+15551234567"],
                           input="meal plan\n\nBALANCE\n")
    assert result.exit_code == 0, result.output
    assert "Breakfast:" in result.output
    assert "[meal_plan, 5 tokens]" in result.output
    assert "You have 95 tokens" in result.output
    contact = session.scalars(select(Contact)).one()
    assert contact.address == "+15551234567"
    assert contact.last_channel == "sms"


def test_chat_on_whatsapp_shares_the_sms_balance(runner, session):
    runner.invoke(args=["chat", "--from", "+15551234567"], input="meal plan\n")
    result = runner.invoke(args=["chat", "--from", "+15551234567", "--channel", "whatsapp"],
                           input="balance\n")
    assert "You have 95 tokens" in result.output
    channels = session.scalars(select(Message.channel).where(Message.direction == "in")).all()
    assert sorted(channels) == ["sms", "whatsapp"]


def test_chat_refuses_a_number_that_is_not_e164(runner, session):
    result = runner.invoke(args=["chat", "--from", "5551234567"], input="hi\n")
    assert result.exit_code == 2
    assert "E.164" in result.output
    assert session.scalars(select(Contact)).all() == []


def test_tokens_show_explains_every_token(runner, session):
    runner.invoke(args=["chat", "--from", "+15551234567"], input="meal plan\n")
    granted = runner.invoke(args=["tokens", "grant", "+15551234567", "25", "--reason",
                                  "sorry for the outage", "--key", "grant:ops:1",
                                  "--actor", "ops:eve"])
    assert granted.exit_code == 0, granted.output
    again = runner.invoke(args=["tokens", "grant", "+15551234567", "25", "--reason",
                                "sorry for the outage", "--key", "grant:ops:1"])
    assert "already granted 25" in again.output

    result = runner.invoke(args=["tokens", "show", "+15551234567"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Posted 120 tokens, held 0, available 120" in out
    assert "By bucket: free 95, bonus 25" in out
    assert "95 of 100" in out and "grant:free:" in out
    assert "25 of 25" in out and "grant:ops:1" in out
    assert "+1********67" in out and "+15551234567" not in out
    recent = out.split("Recent entries")[1].splitlines()[2:]
    lines = [line.split() for line in recent]
    # id, date, time, kind, bucket, amount, running balance ...
    assert [(row[3], row[5], row[6]) for row in lines] == [
        ("grant", "+100", "100"), ("debit", "-5", "95"), ("grant", "+25", "120"),
    ]
    assert "sorry for the outage (by ops:eve)" in out


def test_tokens_adjust_takes_tokens_with_a_reason(runner, session):
    runner.invoke(args=["chat", "--from", "+15551234567"], input="hi\n")
    result = runner.invoke(args=["tokens", "adjust", "+15551234567", "-9", "--reason", "abuse"])
    assert result.exit_code == 0, result.output
    assert "available now 90" in result.output
    too_much = runner.invoke(args=["tokens", "adjust", "+15551234567", "-500", "--reason", "x"])
    assert too_much.exit_code == 1
    assert "500 tokens requested, 90 available" in too_much.output
    missing_reason = runner.invoke(args=["tokens", "adjust", "+15551234567", "5"])
    assert missing_reason.exit_code == 2
    unknown = runner.invoke(args=["tokens", "show", "+15559999999"])
    assert unknown.exit_code == 1 and "no contact" in unknown.output


def test_tokens_expire_holds_releases_stranded_holds(runner, session):
    from datetime import timedelta

    from tokens import ledger
    from tokens.base import utcnow

    account = ledger.open_account(session)
    ledger.grant(session, account.id, 10, key="g")
    ledger.hold(session, account.id, 5, key="hold:stranded", ttl_seconds=60,
                now=utcnow() - timedelta(minutes=5))
    session.commit()
    result = runner.invoke(args=["tokens", "expire-holds"])
    assert result.exit_code == 0 and "expired 1 hold" in result.output
    assert ledger.balance(session, account.id).available == 10
    assert "expired 0 holds" in runner.invoke(args=["tokens", "expire-holds"]).output
