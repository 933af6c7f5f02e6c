"""`tokens.base.insert_once`: the insert-once idiom (a SAVEPOINT around add and flush, a
unique conflict rolls back only that) written once (issue #18)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tokens import ledger
from tokens.admin import AdminUser
from tokens.base import insert_once
from tokens.payments import FailedEvent

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def failed(event_id: str, error: str) -> FailedEvent:
    return FailedEvent(provider="sandbox", event_id=event_id, type="checkout.session.completed",
                       payload="{}", error=error, attempts=1, first_failed_at=NOW,
                       last_failed_at=NOW)


def test_the_first_insert_wins_and_a_second_is_refused(session: Session) -> None:
    first = failed("evt_once", "first")
    assert insert_once(session, first) is True
    assert first.id is not None  # flushed

    second = failed("evt_once", "second")
    assert insert_once(session, second) is False
    assert second not in session  # the savepoint rolled it back
    assert first in session and first.error == "first"

    session.commit()
    rows = session.scalars(select(FailedEvent).where(FailedEvent.event_id == "evt_once")).all()
    assert [row.error for row in rows] == ["first"]


def test_a_conflict_keeps_the_rest_of_the_transaction(session: Session) -> None:
    account = ledger.open_account(session, NOW).id  # written before, in the same transaction
    assert insert_once(session, AdminUser(username="ana", password_hash="x", created_at=NOW,
                                          session_epoch=0))
    assert not insert_once(session, AdminUser(username="ana", password_hash="y",
                                              created_at=NOW, session_epoch=0))
    assert insert_once(session, failed("evt_after", "later"))  # the session still works
    session.commit()
    assert session.get(ledger.Account, account) is not None
    assert session.scalar(select(func.count()).select_from(AdminUser)) == 1
    assert session.scalar(select(AdminUser.password_hash)) == "x"
    assert session.scalar(select(func.count()).select_from(FailedEvent)) == 1
