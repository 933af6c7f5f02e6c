"""`tokens.base.execute_compiled` (a Core statement compiled once per driver, sent as driver
SQL with its parameters processed; with nothing listening, to the driver itself),
`tokens.base.execute_core` (the same for a module-level statement, rows processed),
`tokens.base.write_changes` and the partial indexes the
router's standing read uses (`ix_messages_queued`, `ix_messages_on_the_way`, migration 0018)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import bindparam, create_engine, event, func, insert, make_url, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from bot.models import ON_THE_WAY_STATES, Contact, Message
from bot.router.steps import _standing_statement
from tests.support.statements import counted
from tokens import ledger
from tokens.base import (
    execute_compiled,
    execute_core,
    get_compiled,
    literal_words,
    load_joined,
    write_changes,
)
from tokens.costs import AccountDay

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _count_after(session: Session, moment: datetime) -> int:
    return int(execute_compiled(
        session.connection(), ("test", "accounts after"),
        lambda _dialect: select(func.count()).select_from(ledger.Account)
        .where(ledger.Account.created_at >= moment), {"created_at_1": moment}).scalar_one())


def test_parameters_are_processed_by_their_types(session: Session) -> None:
    ledger.open_account(session, NOW)
    session.flush()
    # UTCDateTime's bind processor: an aware time in another zone is compared as UTC.
    later = datetime(2026, 12, 4, 7, 0, tzinfo=UTC).astimezone()
    assert _count_after(session, later) == 1
    assert _count_after(session, datetime(2026, 12, 5, tzinfo=UTC)) == 0


def test_a_naive_time_is_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        _count_after(session, datetime(2026, 12, 4, 12, 0))


def test_an_expanding_in_is_refused_and_literal_words_serve_instead(session: Session) -> None:
    account = ledger.open_account(session, NOW).id
    session.flush()
    bound = select(func.count()).select_from(ledger.Account).where(
        ledger.Account.id.in_([account]))
    with pytest.raises(ValueError, match="expanding IN"):
        execute_compiled(session.connection(), ("test", "expanding"), lambda _d: bound, {})
    words = select(func.count()).select_from(Message).where(
        Message.status.in_(literal_words(*ON_THE_WAY_STATES)))
    assert execute_compiled(session.connection(), ("test", "words"), lambda _d: words,
                            {}).scalar_one() == 0
    with pytest.raises(ValueError, match="not a plain word"):
        literal_words("pending' OR '1'='1")


def test_compiled_once_and_seen_by_statement_events(session: Session) -> None:
    built: list[str] = []
    seen: list[str] = []

    def build(dialect: str) -> object:
        built.append(dialect)
        return select(AccountDay.cost_musd).where(AccountDay.account_id == -1)

    engine = session.get_bind()
    listener = lambda *args: seen.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        for _ in range(3):
            execute_compiled(session.connection(), ("test", "once"), build,  # type: ignore[arg-type]
                             {"account_id_1": -1}).all()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert len(built) == 1
    assert len([sql for sql in seen if "account_days" in sql]) == 3


def _plan(session: Session) -> str:
    """The plan of the router's standing read, as the router sends it."""
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        session.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table
    prefix = "EXPLAIN " if dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "

    def explain(conn: object, cursor: object, statement: str, parameters: object,
                context: object, executemany: bool) -> tuple[str, object]:
        return prefix + statement, parameters

    channels = ("sms", "whatsapp")
    params = {"account_id": 1, "now": NOW, "grace_start": NOW, "allowance_key": "x",
              "rate_0": 1, "rate_1": 1}
    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", explain, retval=True)
    try:
        rows = execute_compiled(session.connection(), ("bot.router.steps.standing", channels),
                                lambda _d: _standing_statement(channels), params).all()
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    return "\n".join(str(row[-1]) for row in rows)


def test_the_standing_read_uses_the_partial_indexes(session: Session) -> None:
    account = ledger.open_account(session, NOW)
    contact = Contact(address="+15550001111", account_id=account.id, created_at=NOW)
    session.add(contact)
    session.flush()
    plan = _plan(session)
    assert "ix_messages_queued" in plan, plan
    assert "ix_messages_on_the_way" in plan, plan


# --- write_changes ------------------------------------------------------------------------


def _contact(session: Session, address: str = "+15550001111") -> Contact:
    contact = Contact(address=address, account_id=ledger.open_account(session, NOW).id,
                      created_at=NOW)
    session.add(contact)
    session.commit()
    return contact


def test_write_changes_sends_one_update_and_leaves_the_flush_nothing(session: Session) -> None:
    contact = _contact(session)
    contact.last_channel, contact.more_text = "whatsapp", "the rest of the answer"
    with counted(engine=session.get_bind()) as sent:
        write_changes(session, contact)
        session.flush()
    assert len(sent) == 1, sent
    assert sent[0].lstrip().startswith("UPDATE contacts SET")
    assert "last_channel" in sent[0] and "more_text" in sent[0]
    session.commit()
    session.expire_all()
    assert (contact.last_channel, contact.more_text) == ("whatsapp", "the rest of the answer")


def test_write_changes_leaves_out_a_column_set_to_the_value_it_had(session: Session) -> None:
    contact = _contact(session)
    contact.more_text = "kept"
    session.commit()
    assert contact.more_text == "kept"  # loaded again after the commit, as the router does
    contact.more_text = "kept"  # the same value again: no net change, as the flush sees it
    with counted(engine=session.get_bind()) as sent:
        write_changes(session, contact)
        session.flush()
    assert sent == []
    contact.more_text, contact.last_channel = "kept", "sms"
    with counted(engine=session.get_bind()) as sent:
        write_changes(session, contact)
        session.flush()
    assert len(sent) == 1 and "last_channel" in sent[0] and "more_text" not in sent[0], sent


def test_write_changes_leaves_what_it_cannot_write_to_the_flush(session: Session) -> None:
    pending = Contact(address="+15550002222", account_id=ledger.open_account(session, NOW).id,
                      created_at=NOW)
    session.add(pending)
    with counted(engine=session.get_bind()) as sent:
        write_changes(session, pending, None)
    assert sent == []  # not persistent yet: the flush inserts it
    session.commit()
    assert session.scalar(select(func.count()).select_from(Contact)) == 1
    pending.last_channel = "sms"
    session.rollback()  # a rollback expires it as after any flush
    assert pending.last_channel is None


# --- load_compiled (bot.contacts.find_contact) ---------------------------------------------


def test_load_compiled_gives_a_persistent_object_from_one_select(session: Session) -> None:
    from bot.contacts import find_contact

    chosen = datetime(2026, 12, 4, 13, 30, tzinfo=UTC)
    contact = _contact(session)
    contact.language, contact.language_chosen_at = "es", chosen
    session.commit()
    ident = contact.id
    session.expunge_all()
    with counted(engine=session.get_bind()) as sent:
        found = find_contact(session, "+15550001111")
        assert found is not None
        # Every column is loaded and processed as the ORM would: no refresh, UTC-aware times.
        assert (found.id, found.address, found.language) == (ident, "+15550001111", "es")
        assert found.created_at == NOW and found.created_at.tzinfo is not None
        assert found.language_chosen_at == chosen and found.sms_opted_out_at is None
    assert len(sent) == 1 and sent[0].lstrip().startswith("SELECT"), sent
    assert found in session and not session.dirty and not session.new
    assert session.get(Contact, ident) is found  # in the identity map
    found.last_channel = "whatsapp"  # changes are flushed as for any loaded object
    session.commit()
    session.expunge_all()
    assert session.scalars(select(Contact.last_channel)).one() == "whatsapp"
    assert find_contact(session, "+15550009999") is None


def test_load_compiled_runs_the_query_where_it_would_differ(session: Session) -> None:
    from bot.contacts import find_contact

    contact = _contact(session)
    session.commit()  # expires it; it stays in the identity map
    # Already in the session: the query's object, refreshed, not a second one.
    assert find_contact(session, "+15550001111") is contact
    assert contact.address == "+15550001111"
    # A change not yet flushed: the query flushes it first, as autoflush does.
    contact.address = "+15550003333"
    assert find_contact(session, "+15550003333") is contact
    pending = Contact(address="+15550004444", account_id=contact.account_id, created_at=NOW)
    session.add(pending)
    assert find_contact(session, "+15550004444") is pending


def test_get_compiled_gives_what_session_get_gives(session: Session) -> None:
    from tokens.levels import LevelState

    account = ledger.open_account(session, NOW).id
    session.add(LevelState(account_id=account, free_replies=2, billing_replies=0,
                           reply_day="2026-12-04"))
    session.commit()
    session.expunge_all()
    # Not in the session: one compiled SELECT, a persistent object with every column.
    with counted(engine=session.get_bind()) as sent:
        state = get_compiled(session, LevelState, account)
    assert len(sent) == 1 and sent[0].lstrip().startswith("SELECT"), sent
    assert state is not None and (state.free_replies, state.reply_day) == (2, "2026-12-04")
    assert state in session and session.get(LevelState, account) is state
    # Loaded: the same object, no statement.
    with counted(engine=session.get_bind()) as sent:
        assert get_compiled(session, LevelState, account) is state
    assert sent == []
    # Expired: refreshed, as session.get refreshes it.
    session.commit()
    assert get_compiled(session, LevelState, account) is state and state.free_replies == 2
    # A change not yet flushed: session.get, which flushes it first.
    state.free_replies = 3
    assert get_compiled(session, LevelState, account) is state
    assert get_compiled(session, LevelState, -1) is None
    session.expunge_all()
    assert get_compiled(session, LevelState, -1) is None
    with pytest.raises(ValueError, match="composite primary key"):
        get_compiled(session, AccountDay, (account, "2026-12-04"))


def test_load_joined_gives_what_the_populate_existing_query_gives(session: Session) -> None:
    from sqlalchemy.exc import NoResultFound

    from bot.router.answer import _SETTLING, _SETTLING_ROW

    contact = _contact(session)
    message = Message(contact_id=contact.id, direction="in", channel="sms", body="hola",
                      message_sid="SM1", num_media=0, tokens_charged=0, units=1,
                      created_at=NOW)
    session.add(message)
    session.commit()
    ident, contact_id = message.id, contact.id
    params = {"message_id": ident}

    def joined() -> tuple[Message, Contact]:
        found, owner = load_joined(session, _SETTLING_ROW, _SETTLING, (Message, Contact),
                                   params)
        return found, owner

    # Expired in the session: the same objects, loaded again, from one statement.
    with counted(engine=session.get_bind()) as sent:
        assert joined() == (message, contact)
        assert (message.body, message.created_at, contact.address) == (
            "hola", NOW, "+15550001111")
    assert len(sent) == 1, sent
    # Changed behind the session: the row's values, as populate_existing gives them.
    session.execute(update(Message).where(Message.id == ident).values(outcome="queued"))
    assert joined()[0].outcome == "queued" and not session.dirty
    # Not in the session: new persistent objects, every column loaded.
    session.commit()
    session.expunge_all()
    found, owner = joined()
    assert (found.id, found.contact_id, found.message_sid, owner.id) == (
        ident, contact_id, "SM1", contact_id)
    assert found.created_at == NOW and found.created_at.tzinfo is not None
    assert session.get(Message, ident) is found and not session.dirty
    # A change not yet flushed: the ORM query, which flushes it first.
    owner.more_text = "the rest"
    assert joined() == (found, owner) and owner.more_text == "the rest"
    assert session.scalars(select(Contact.more_text)).one() == "the rest"
    with pytest.raises(NoResultFound):
        load_joined(session, _SETTLING_ROW, _SETTLING, (Message, Contact),
                    {"message_id": -1})


def test_begin_immediate_goes_to_the_driver_unless_something_listens(
        session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = session.get_bind()
    if engine.dialect.name != "sqlite":
        pytest.skip("BEGIN IMMEDIATE is SQLite's (app.extensions.configure_sqlite)")
    session.commit()

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("exec_driver_sql used")

    with monkeypatch.context() as patch:
        patch.setattr(Connection, "exec_driver_sql", refuse)
        with engine.connect() as connection, connection.begin():
            assert connection.connection.driver_connection.in_transaction
    with counted(begin=True, engine=engine) as sent, engine.connect() as connection, \
            connection.begin():
        pass
    assert sent == ["BEGIN IMMEDIATE"]


# Module-level statements, as `execute_core` expects them (it keys its cache by the object).
_ACCOUNT_TIMES = (select(ledger.Account.__table__.c.id, ledger.Account.__table__.c.created_at,
                         ledger.Account.__table__.c.suspended_at)
                  .where(ledger.Account.__table__.c.id == bindparam("account_id")))
_SUSPEND = (update(ledger.Account.__table__)
            .where(ledger.Account.__table__.c.id == bindparam("account_id"))
            .values(suspension_reason=bindparam("reason")))
_NEW_CONTACT = insert(Contact.__table__).values(
    address=bindparam("address"), account_id=bindparam("account_id"),
    created_at=bindparam("created_at"))


def test_execute_core_gives_the_rows_and_rowcount_session_execute_gives(
        session: Session) -> None:
    account = ledger.open_account(session, NOW).id
    session.flush()
    params = {"account_id": account}
    core = execute_core(session, _ACCOUNT_TIMES, params).all()
    assert core == session.execute(_ACCOUNT_TIMES, params).all()
    assert core[0].created_at == NOW and core[0].created_at.tzinfo is not None
    assert core[0].suspended_at is None
    assert execute_core(session, _SUSPEND, {**params, "reason": "test"}).rowcount == 1
    assert execute_core(session, _SUSPEND, {"account_id": -1, "reason": "test"}).rowcount == 0


def _refuse_exec_driver_sql(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("exec_driver_sql used")

    monkeypatch.setattr(Connection, "exec_driver_sql", refuse)


def test_with_nothing_listening_the_driver_runs_it(
        session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    account = ledger.open_account(session, NOW).id
    session.flush()
    _refuse_exec_driver_sql(monkeypatch)  # nothing may go through SQLAlchemy's execution
    row = execute_core(session, _ACCOUNT_TIMES, {"account_id": account}).one()
    assert (row.id, row.created_at) == (account, NOW)
    assert execute_core(session, _SUSPEND, {"account_id": account, "reason": "test"}
                        ).rowcount == 1
    assert execute_core(session, _SUSPEND, {"account_id": -1, "reason": "test"}).rowcount == 0


def test_outside_a_transaction_sqlalchemy_runs_it_and_begins_one(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # On the driver alone, a statement on a connection that has not begun would run in a
    # transaction SQLAlchemy does not know of (psycopg) or commit on its own (SQLite).
    engine = create_engine(database_url)
    used: list[str] = []
    real = Connection.exec_driver_sql

    def seen(self: Connection, sql: str, *args: Any, **kwargs: Any) -> Any:
        used.append(sql)
        return real(self, sql, *args, **kwargs)

    monkeypatch.setattr(Connection, "exec_driver_sql", seen)
    try:
        with engine.connect() as connection:
            assert not connection.in_transaction()
            execute_compiled(connection, ("test", "one"), lambda _dialect: select(1), {})
            assert used and connection.in_transaction()
    finally:
        engine.dispose()


@pytest.mark.backends("postgresql")
def test_a_connection_lost_on_the_driver_path_empties_the_pool(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=2, max_overflow=0)
    try:
        with Session(engine) as session:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            url = make_url(database_url)
            with psycopg.connect(host=url.host, port=url.port, user=url.username,
                                 dbname="postgres", autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            with pytest.raises(DBAPIError) as lost:
                execute_core(session, _ACCOUNT_TIMES, {"account_id": 1}).all()
            assert lost.value.connection_invalidated
        with Session(engine) as session:  # a fresh connection, as after exec_driver_sql
            assert session.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()


def test_a_refused_statement_raises_sqlalchemy_s_error_and_the_session_goes_on(
        session: Session) -> None:
    account = ledger.open_account(session, NOW).id
    session.flush()
    params = {"address": "+15550002222", "account_id": account, "created_at": NOW}
    execute_core(session, _NEW_CONTACT, params)
    with pytest.raises(IntegrityError), session.begin_nested():
        execute_core(session, _NEW_CONTACT, params)  # UNIQUE(address)
    assert session.scalar(select(func.count()).select_from(Contact)) == 1


def test_a_time_is_stored_as_sqlalchemy_stores_it(session: Session) -> None:
    # SQLite keeps times as text: a time written in another format (str(datetime) gives
    # "...+00:00") would compare unequal to the same time written by the ORM.
    account = ledger.open_account(session, NOW).id
    session.add(Contact(address="+15550003333", account_id=account, created_at=NOW))
    execute_core(session, _NEW_CONTACT, {"address": "+15550004444", "account_id": account,
                                         "created_at": NOW})
    session.flush()
    stored = session.execute(text(
        "SELECT created_at FROM contacts ORDER BY address")).scalars().all()
    assert stored[0] == stored[1]
    assert session.scalar(select(func.count()).select_from(Contact)
                          .where(Contact.created_at == NOW)) == 2
