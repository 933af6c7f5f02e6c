"""The inbox: inbound messages acknowledged and not yet routed (docs/pipeline.md).

`store_in_inbox` is the webhook's one statement with a queue configured. The worker routes
the rows (`bot.router.drain_person`) and deletes each one with the routing.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from bot.messages import InboundMessage, to_payload
from bot.models import InboxMessage
from tokens.base import insert_on_conflict, utcnow


def store_in_inbox(session: Session, msg: InboundMessage) -> int | None:
    """Store `msg` in the inbox once per MessageSid:
    `INSERT ... ON CONFLICT (message_sid) DO NOTHING RETURNING id`.

    Args:
        session: the caller's session; the caller commits.
        msg: the parsed inbound message.

    Returns:
        The new row's id, or None when the MessageSid is already in the inbox (a repeat
        delivery; nothing changed).
    """
    values = {"message_sid": msg.message_sid, "sender": msg.sender, "channel": msg.channel,
              "payload": to_payload(msg), "received_at": utcnow()}
    return session.execute(_STORE, values).scalar()


# One statement, compiled once (`tokens.base.insert_on_conflict`).
_STORE = insert_on_conflict(InboxMessage.__table__,
                            ("message_sid", "sender", "channel", "payload", "received_at"),
                            ("message_sid",), returning=("id",))
