"""Messages the bot sends on its own (a purchase confirmed, a card to fix), not in reply.

A notice goes to the channel the person last wrote on, never to a channel where they opted
out; it is stored `pending` and sent through the REST API like any reply (`bot.outbound`), so
the WhatsApp 24-hour window and every delivery rule apply.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.models import Contact, Message
from bot.router import billed_units
from bot.segments import fold_for_gsm, normalise_for_gsm, split_message
from tokens import ledger
from tokens.base import utcnow


def queue_notice(
    session: Session, account_id: int, text: str, now: datetime | None = None
) -> list[int]:
    """Store `text` as pending outbound messages to the account's person; returns their ids
    (none when the person has no contact, opted out on their last channel, or is suspended).
    Flushes."""
    now = now or utcnow()
    account = session.get(ledger.Account, account_id)
    if account is not None and account.suspended_at is not None:
        return []
    contact = session.scalar(
        select(Contact).where(Contact.account_id == account_id)
        .order_by(Contact.last_inbound_at.desc().nulls_last(), Contact.id.desc()).limit(1)
    )
    if contact is None:
        return []
    channel = contact.last_channel or "sms"
    if contact.opted_out_at(channel) is not None:
        return []
    if channel == "sms":
        text = fold_for_gsm(normalise_for_gsm(text))
    ids = []
    for part in split_message(text):
        row = Message(contact_id=contact.id, direction="out", channel=channel, body=part,
                      units=billed_units(channel, part), status="pending", created_at=now)
        session.add(row)
        session.flush()
        ids.append(row.id)
    return ids
