"""Counting the SQL statements the app's engine sends (the tests that bound the hot paths:
tests/tokens/test_ledger_statements.py, test_costs_statements.py,
tests/bot/test_outbound_statements.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event


class Sent(list[str]):
    """The statements sent, in order; shown one first line each, for assertion messages."""

    def __repr__(self) -> str:
        return "\n".join(statement.split("\n")[0][:120] for statement in self)


@contextmanager
def counted(*, begin: bool = False, engine: Engine | None = None) -> Iterator[Sent]:
    """The statements an engine sends inside the block (`before_cursor_execute`).

    Args:
        begin: count SQLite's `BEGIN IMMEDIATE` too (one per transaction); left out by
            default, since PostgreSQL's BEGIN is not a statement the driver sends this way.
        engine: the engine to listen on; None: the app's (`db.engine`) inside an app context,
            else every engine of the process (the Flask-free `db_session` tests have one).
    """
    from flask import has_app_context

    from app.extensions import db

    sent = Sent()
    target: Any = engine if engine is not None else db.engine if has_app_context() else Engine

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if begin or not statement.lstrip().upper().startswith("BEGIN"):
            sent.append(statement)

    event.listen(target, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(target, "before_cursor_execute", note)
