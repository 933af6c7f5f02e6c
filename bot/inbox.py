"""The inbox: inbound messages acknowledged and not yet routed (docs/pipeline.md).

`store_in_inbox` is the webhook's one statement with a queue configured. The worker routes
the rows (`bot.router.drain_person`) and deletes each one in the routing's transaction: on
PostgreSQL inside the statement that stores the routed message (`TAKE_IN_CTE`, a
data-modifying CTE), elsewhere by `take_from_inbox`.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Integer, Table, bindparam, delete
from sqlalchemy.orm import Session

from bot.messages import InboundMessage, to_payload
from bot.models import InboxMessage
from tokens.base import execute_core, insert_on_conflict, one_statement_transaction, utcnow


def store_in_inbox(session: Session, msg: InboundMessage) -> int | None:
    """Store `msg` in the inbox once per MessageSid:
    `INSERT ... ON CONFLICT (message_sid) DO NOTHING RETURNING id`.

    With no transaction open on PostgreSQL, the statement commits on its own
    (`tokens.base.one_statement_transaction`: no `BEGIN` and `COMMIT` round trips on the
    acknowledgement's path); the caller's `commit` is still what ends the transaction.

    Args:
        session: the caller's session; the caller commits.
        msg: the parsed inbound message.

    Returns:
        The new row's id, or None when the MessageSid is already in the inbox (a repeat
        delivery; nothing changed).
    """
    one_statement_transaction(session)
    values = {"message_sid": msg.message_sid, "sender": msg.sender, "channel": msg.channel,
              "payload": to_payload(msg), "received_at": utcnow()}
    return execute_core(session, _STORE, values).scalar()


# One statement, compiled once (`tokens.base.insert_on_conflict`) and sent by `execute_core`
# (no cache-key walk; the driver's connection when nothing listens).
_STORE = insert_on_conflict(InboxMessage.__table__,
                            ("message_sid", "sender", "channel", "payload", "received_at"),
                            ("message_sid",), returning=("id",))


def take_from_inbox(session: Session, inbox_id: int) -> None:
    """Delete the inbox row `inbox_id` (routed, or unreadable), in the caller's transaction:
    one `DELETE`; a row already gone changes nothing."""
    execute_core(session, _TAKE, {"inbox_id": inbox_id})


# PostgreSQL: the same DELETE, written before a statement as a data-modifying CTE (its
# `inbox_id` bound as `TAKE_IN_CTE_PARAMS`), which PostgreSQL runs once whatever the statement
# itself does (a conflicting INSERT included), in the statement's snapshot.
TAKE_IN_CTE = "WITH taken AS (DELETE FROM inbox WHERE id = :inbox_id) "
TAKE_IN_CTE_PARAMS = (bindparam("inbox_id", type_=Integer()),)

# The inbox table, for the Core statements on it (here and `bot.router.pipeline`'s reads).
INBOX = cast(Table, InboxMessage.__table__)
# A Core statement on the table: the ORM's bulk DELETE would look for the row among the
# session's objects first (6% of a worker's CPU samples; there are none to find).
_TAKE = delete(INBOX).where(INBOX.c.id == bindparam("inbox_id", type_=Integer()))
