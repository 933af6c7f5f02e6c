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
