"""Contacts (`bot.contacts`): one contact and one account per number, erasure that keeps only a
keyed hash and hands the same account back, the language rules, and masked numbers."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from bot.contacts import (
    LanguageState,
    address_hmac,
    chosen_language,
    consent_log,
    erasure_key,
    find_contact,
    forget,
    mask_address,
    noted_language,
    reply_language,
    resolve_contact,
)
from bot.models import ConsentEvent, Contact, ErasedContact, InboxMessage, Message
from bot.models import MessageStatusEvent as StatusEvent
from tokens.ledger import Account

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ANA, BEN = "+16505558893", "+15550009999"
KEY = erasure_key("a test deployment's secret key")
ES, EN = "plan de comidas vegetariano para 3 días", "how do I make pancakes without eggs"


def count(session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def test_one_contact_and_one_account_per_address(session):
    ana = resolve_contact(session, ANA, NOV, KEY)
    assert (ana.address, ana.created_at) == (ANA, NOV)
    assert resolve_contact(session, ANA, NOV + timedelta(days=1), KEY).id == ana.id  # no-op
    ben = resolve_contact(session, BEN, NOV, KEY)
    assert ben.account_id != ana.account_id
    assert (count(session, Contact), count(session, Account)) == (2, 2)
    assert find_contact(session, "+10000000000") is None


def test_forget_deletes_the_conversation_and_keeps_only_a_keyed_hash(session):
    ana = resolve_contact(session, ANA, NOV, KEY)
    account_id = ana.account_id
    question = Message(contact_id=ana.id, direction="in", channel="sms", message_sid="SM1",
                       body="meal plan")
    session.add(question)
    session.flush()
    session.add_all([
        Message(contact_id=ana.id, direction="out", channel="sms", body="Oats.",
                in_reply_to_id=question.id),
        StatusEvent(message_sid="SM1", status="received"),
        ConsentEvent(contact_id=ana.id, channel="sms", action="opt_out", keyword="STOP",
                     source="keyword", at=NOV),
        InboxMessage(message_sid="SM2", sender=ANA, channel="sms", payload="{}"),
        InboxMessage(message_sid="SM3", sender=BEN, channel="sms", payload="{}")])
    session.flush()

    done = forget(session, ANA, KEY, now=NOV)
    assert done is not None
    assert (done.account_id, done.messages, done.status_events) == (account_id, 3, 1)
    assert find_contact(session, ANA) is None
    assert count(session, Message) == count(session, ConsentEvent) == 0
    assert count(session, InboxMessage) == 1  # Ben's message still waits
    assert session.get(Account, account_id) is not None
    erased = session.scalars(select(ErasedContact)).one()
    assert (erased.address_hmac, erased.account_id) == (address_hmac(KEY, ANA), account_id)
    assert ANA.lstrip("+") not in erased.address_hmac
    # Writing again: the same account, and the hash goes (the contact ties them again).
    assert resolve_contact(session, ANA, NOV, KEY).account_id == account_id
    assert count(session, ErasedContact) == 0


def test_a_forgotten_number_is_found_only_with_the_same_key(session):
    first = resolve_contact(session, ANA, NOV, KEY).account_id
    forget(session, ANA, KEY)
    assert resolve_contact(session, ANA, NOV, erasure_key("another secret")).account_id != first
    forget(session, BEN, None)  # no contact: nothing happens
    second = resolve_contact(session, BEN, NOV, KEY).account_id
    forget(session, BEN, erased_key=None)  # no hash kept: a new person next time
    assert count(session, ErasedContact) == 1  # Ana's, unmatched by the other key
    assert resolve_contact(session, BEN, NOV, KEY).account_id != second


def test_forget_of_an_unknown_address_still_deletes_its_waiting_messages(session):
    session.add(InboxMessage(message_sid="SM9", sender=ANA, channel="sms", payload="{}"))
    session.flush()
    assert forget(session, ANA, KEY) is None
    assert count(session, InboxMessage) == 0 and count(session, ErasedContact) == 0


def test_the_consent_log_is_masked_newest_first_and_filtered(session):
    ana = resolve_contact(session, ANA, NOV, KEY)
    ben = resolve_contact(session, BEN, NOV, KEY)
    for minutes, who, action in ((0, ana, "opt_out"), (1, ben, "opt_out"), (2, ana, "opt_in")):
        session.add(ConsentEvent(contact_id=who.id, channel="sms", action=action,
                                 keyword=action.upper(), source="keyword",
                                 at=NOV + timedelta(minutes=minutes)))
    session.flush()
    lines = consent_log(session)
    assert [(line.contact, line.action) for line in lines] == [
        (mask_address(ANA), "opt_in"), (mask_address(BEN), "opt_out"),
        (mask_address(ANA), "opt_out")]
    assert all(ANA not in repr(line) and BEN not in repr(line) for line in lines)
    assert [line.at for line in consent_log(session, ana.account_id)] == [
        NOV + timedelta(minutes=2), NOV]
    assert len(consent_log(session, limit=1)) == 1


@pytest.mark.parametrize("address, masked", [
    ("+16505558893", "+1********93"),
    ("+447700900123", "+4*********23"),
    ("+12345", "****45"),
    ("wa:447700900123", "wa:**********23"),
    ("wa:ab12", "wa:****"),
])
def test_masked_addresses_never_carry_the_number(address, masked):
    assert mask_address(address) == masked
    assert address.removeprefix("wa:").lstrip("+")[:-2] not in masked
    # No hash of it either: hashing every number would undo one.
    assert hashlib.sha256(address.encode()).hexdigest()[:12] not in masked


def test_detection_sets_then_switches_after_two_clear_messages_in_a_row():
    state = LanguageState(None)
    assert noted_language(state, "ok") == state  # not clear: nothing changes
    state = noted_language(state, ES)
    assert state == LanguageState("es")
    state = noted_language(state, EN)
    assert state == LanguageState("es", "en")
    assert noted_language(state, ES) == LanguageState("es")  # the streak is broken
    assert noted_language(noted_language(state, "gracias"), EN) == LanguageState("en")


def test_a_chosen_language_stays_and_an_unknown_one_is_refused():
    chosen = chosen_language("en", NOV)
    assert chosen == LanguageState("en", None, NOV)
    assert noted_language(noted_language(chosen, ES), ES) == chosen
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        chosen_language("fr", NOV)


def test_the_reply_language_is_the_persons_else_the_messages():
    assert reply_language(LanguageState("es"), EN) == "es"
    assert reply_language(None, ES) == "es"
    assert reply_language(LanguageState(None), "ok") == "en"  # in doubt: English


def test_writing_an_unchanged_state_dirties_nothing(session):
    ana = resolve_contact(session, ANA, NOV, KEY)
    LanguageState.of(ana).write(ana)
    assert not session.is_modified(ana)
    LanguageState("es", "en").write(ana)
    assert (ana.language, ana.language_candidate, ana.language_chosen_at) == ("es", "en", None)
