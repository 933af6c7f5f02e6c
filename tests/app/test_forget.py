"""`flask --app wsgi contacts forget PHONE`: conversation data goes, money records stay,
tied only to a keyed hash of the number (docs/SECURITY.md, "Erasure")."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from bot.contacts import address_hmac, erasure_key
from bot.models import Contact, ErasedContact, Message, MessageStatusEvent
from testing.deployment import post_signed
from testing.payloads import sms
from tokens import account_links, costs, ledger
from tokens.ledger import LedgerEntry

PHONE = "+16505558893"


def count(session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def test_forget_deletes_messages_and_the_contact_and_keeps_the_ledger(client, runner, session):
    post_signed(client, sms("meal plan", sid="SM" + "1" * 32))
    post_signed(client, sms("BALANCE", sid="SM" + "2" * 32))
    post_signed(client, sms("hello", sid="SM" + "3" * 32, sender="+15550009999"))
    session.add(MessageStatusEvent(message_sid="SM" + "1" * 32, status="received"))
    session.commit()
    account_id = session.scalars(select(Contact.account_id).where(
        Contact.address == PHONE)).one()
    entries = count(session, LedgerEntry, LedgerEntry.account_id == account_id)
    cost = costs.month(session, account_id).cost_musd
    assert entries >= 2 and cost > 0

    link = account_links.issue_link(session, account_id)
    session.commit()
    refused = runner.invoke(args=["contacts", "forget", PHONE], input="n\n")
    assert refused.exit_code != 0 and count(session, Contact) == 2
    done = runner.invoke(args=["contacts", "forget", PHONE, "--yes"])
    assert done.exit_code == 0, done.output
    assert "4 messages" in done.output and PHONE not in done.output
    session.expire_all()
    assert count(session, Contact, Contact.address == PHONE) == 0
    assert count(session, Message) == 2  # the other person's message and its reply
    assert count(session, MessageStatusEvent) == 0
    assert count(session, LedgerEntry, LedgerEntry.account_id == account_id) == entries
    assert costs.month(session, account_id).cost_musd == cost
    assert ledger.balance(session, account_id).posted > 0
    # The account page link sent to the number opens nothing any more.
    with pytest.raises(account_links.AccountLinkNotFound):
        account_links.open_link(session, link.token)

    again = runner.invoke(args=["contacts", "forget", PHONE, "--yes"])
    assert again.exit_code != 0 and "no contact" in again.output
    bad = runner.invoke(args=["contacts", "forget", "not-a-number", "--yes"])
    assert bad.exit_code != 0 and "E.164" in bad.output
    # What is kept of the number: a keyed hash, never the number itself.
    erased = session.scalars(select(ErasedContact)).one()
    assert erased.account_id == account_id and len(erased.address_hmac) == 64
    assert PHONE not in erased.address_hmac and PHONE.lstrip("+") not in erased.address_hmac
    balance_before = ledger.balance(session, account_id).available
    # Writing again gives the same account back: no second free allowance this month, the
    # same exposure (so the same level), the same balance.
    reply = post_signed(client, sms("BALANCE", sid="SM" + "4" * 32)).get_data(as_text=True)
    session.expire_all()
    again_account = session.scalars(select(Contact.account_id).where(
        Contact.address == PHONE)).one()
    assert again_account == account_id
    assert count(session, LedgerEntry, LedgerEntry.account_id == account_id,
                 LedgerEntry.kind == "grant") == 1
    assert ledger.balance(session, account_id).available == balance_before
    assert str(balance_before) in reply
    assert costs.month(session, account_id).cost_musd >= cost
    assert count(session, ErasedContact) == 0  # the contact row ties them again


def test_a_forgotten_number_is_matched_only_with_this_deployments_key(app, client, runner,
                                                                       session):
    post_signed(client, sms("hello", sid="SM" + "5" * 32))
    account_id = session.scalars(select(Contact.account_id)).one()
    assert runner.invoke(args=["contacts", "forget", PHONE, "--yes"]).exit_code == 0
    stored = session.scalars(select(ErasedContact.address_hmac)).one()
    assert stored == address_hmac(erasure_key(app.config["SECRET_KEY"]), PHONE)
    assert stored != address_hmac(erasure_key("another deployment's secret" * 2), PHONE)
    assert stored != address_hmac(erasure_key(app.config["SECRET_KEY"]), "+16505558894")
    # another number is another person
    post_signed(client, sms("hello", sid="SM" + "6" * 32, sender="+16505558894"))
    other = session.scalars(select(Contact.account_id)
                            .where(Contact.address == "+16505558894")).one()
    assert other != account_id


def test_forget_also_deletes_messages_still_waiting_in_the_inbox(queued_app, twilio_api):
    """With a queue, a message waits in the inbox (body included) until a worker routes it;
    erasure takes it too, for a person the bot has answered before or never yet."""
    from app.extensions import db
    from bot.models import InboxMessage
    from testing.deployment import run_worker

    client = queued_app.test_client()
    post_signed(client, sms("meal plan", sid="SMforget1"))
    run_worker(queued_app)
    post_signed(client, sms("recipe for soup", sid="SMforget2"))  # waits in the inbox
    post_signed(client, sms("hi", sid="SMforget3", sender="+15550008888"))  # never routed
    runner = queued_app.test_cli_runner()
    done = runner.invoke(args=["contacts", "forget", PHONE, "--yes"])
    assert done.exit_code == 0, done.output
    assert "3 messages" in done.output  # the inbound, its reply, and the waiting one
    never = runner.invoke(args=["contacts", "forget", "+15550008888", "--yes"])
    assert never.exit_code != 0  # no contact yet ...
    session = db.session
    session.expire_all()
    assert count(session, InboxMessage) == 0  # ... but nothing of theirs is left waiting
    assert run_worker(queued_app) == 2
    assert len(twilio_api.accepted) == 1  # only the first answer was ever sent
