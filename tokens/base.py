"""The shared SQLAlchemy declarative base and the column types every layer uses.

It lives in `tokens/` because that is the lowest layer with tables; `bot/` models subclass the
same `Base`, and `app/` hands `Base.metadata` to Flask-Migrate.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    MetaData,
    String,
    Table,
    TextClause,
    bindparam,
    insert,
    literal_column,
    text,
)
from sqlalchemy.engine import Connection, Dialect, Result
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.orm import DeclarativeBase, Session, make_transient_to_detached, scoped_session
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.selectable import TextualSelect
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so that Alembic can drop and alter them on PostgreSQL and in
# SQLite batch mode (Alembic docs, "The Importance of Naming Constraints").
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table in the project."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and stores naive UTC text, so
    values read back from SQLite are re-marked as UTC here. Naive datetimes are refused on the
    way in (raises `ValueError`), because a naive time in a ledger is a bug waiting to happen.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a timezone-aware UTC time is required")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def on_postgresql(session: Session) -> bool:
    """Whether `session` talks to PostgreSQL (its connection's dialect; else it is SQLite)."""
    return bool(session.connection().dialect.name == "postgresql")


def one_statement_transaction(session: Session) -> bool:
    """On PostgreSQL, when `session` has no transaction open, begin its next one on a
    connection in autocommit mode (SQLAlchemy's per-transaction `isolation_level` option), for
    a transaction of ONE statement: that statement commits on its own, in one round trip
    instead of three (psycopg sends `BEGIN` before the first statement and `COMMIT` after the
    last, each waited for). Measured on this project's machine, one `SELECT` through a session:
    0.08-0.13 ms less client CPU, 0.07-0.1 ms less server CPU and 0.17-0.3 ms less latency per
    transaction (docs/pipeline.md, "Transactions of one statement").

    Every statement in the transaction commits on its own, so a caller that may send a
    second one whose effect must go with the first ends the transaction before it
    (`session.commit()`, which then sends nothing). The caller commits as usual; the
    connection goes back to the pool in its default mode.

    Returns:
        True when the next transaction is in autocommit mode; False when nothing changed
        (SQLite, whose `BEGIN IMMEDIATE` writers keep their transaction, or a transaction
        already open in `session`).
    """
    current = session() if isinstance(session, scoped_session) else session  # Flask's proxy
    if current.in_transaction() or current.get_bind().dialect.name != "postgresql":
        return False
    current.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    return True


def insert_once(session: Session, row: Base) -> bool:
    """Insert `row` unless a unique constraint already holds its like: add and flush it in a
    SAVEPOINT (`session.begin_nested()`), so a conflict rolls back only that.

    Returns:
        True when `row` was inserted (it is now persistent and flushed); False when the
        INSERT raised `IntegrityError` (another writer's row came first, or any other
        constraint refused it): the savepoint is rolled back, `row` is no longer in the
        session and the caller reads the existing row, or refuses, as its case wants.
    """
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True



# (dialect, driver, key) -> `execute_compiled`'s statement as compiled once (`_Compiled`).
_COMPILED: dict[tuple[str, str, Hashable], _Compiled] = {}


@dataclass(frozen=True)
class _Compiled:
    """One statement of `execute_compiled`, compiled for one database driver.

    Attributes:
        sql: the SQL as the driver takes it (named parameters on SQLite).
        fixed: the values of the parameters the statement sets itself (processed).
        processors: parameter name -> its type's bind processor, for those that have one.
        keys: the result's column names (empty for a statement that returns no rows).
        results: per result column, its type's result processor or None; None when no
            column has one (`_processed` then hands the rows on as they are).
        metadata: the result's keys as SQLAlchemy's results take them, built once and
            shared by every result of the statement, as SQLAlchemy shares a compiled
            statement's own (building it costs about 1 µs a column).
    """

    sql: str
    fixed: dict[str, Any]
    processors: dict[str, Any]
    keys: tuple[str, ...]
    results: tuple[Callable[[Any], Any] | None, ...] | None
    metadata: SimpleResultMetaData


def _compile(connection: Connection, key: Hashable,
             build: Callable[[str], ClauseElement]) -> _Compiled:
    """`build(dialect name)` compiled for `connection`'s driver, kept under `key`."""
    dialect = connection.dialect
    cache_key = (dialect.name, dialect.driver, key)
    compiled = _COMPILED.get(cache_key)
    if compiled is not None:
        return compiled
    # SQLite is compiled with named parameters (its driver takes both), so that the
    # parameters are a dict on every backend.
    target = (type(dialect)(paramstyle="named")  # type: ignore[call-arg]
              if dialect.name == "sqlite" else dialect)
    statement = build(dialect.name).compile(dialect=target)
    assert isinstance(statement, SQLCompiler)
    sql = str(statement)
    if "POSTCOMPILE" in sql:
        raise ValueError(f"statement {key!r} has an expanding IN: give literal values")
    processors: dict[str, Any] = {}
    for name, bind in statement.binds.items():
        # The dialect's own processor (SQLite writes a datetime as SQLAlchemy's text, not
        # as str(datetime)), as `Connection.execute` uses it.
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors[name] = process
    fixed = {name: bind.effective_value for name, bind in statement.binds.items()
             if not bind.required}  # e.g. `count(*) > 0`'s 0
    fixed = {name: processors[name](value) if name in processors else value
             for name, value in fixed.items()}
    # The compiler's own list of the result's columns, (key name, name, objects, type) each,
    # from which SQLAlchemy's cursor result takes its keys and processors (2.0, pinned).
    columns = statement._result_columns
    results = tuple(column[3].dialect_impl(dialect).result_processor(dialect, None)
                    for column in columns)
    keys = tuple(column[0] for column in columns)
    compiled = _COMPILED[cache_key] = _Compiled(
        sql, fixed, processors, keys,
        results if any(process is not None for process in results) else None,
        SimpleResultMetaData(keys))
    return compiled


def execute_compiled(connection: Connection, key: Hashable,
                     build: Callable[[str], ClauseElement],
                     params: Mapping[str, Any]) -> Result[Any]:
    """Run the Core statement `build(dialect_name)` makes ("postgresql", "sqlite"), compiled
    once per database driver and `key`, with `params` (bound parameter name -> value).

    SQLAlchemy's statement cache spares the compilation but not the cache key: each
    execution walks the whole statement to compute it, which for a statement of several
    subqueries (the router's standing read, `bot.router.steps.serialise`) costs more CPU
    than SQLite spends running it, and dialect `INSERT ... ON CONFLICT` constructs are not
    cached at all. This sends the SQL compiled the first time as driver SQL, each parameter
    processed by its type's bind processor (`UTCDateTime` and the like) as SQLAlchemy would.
    Rows come back as the driver gives them, without result processing (a timestamp is text
    on SQLite; `execute_core` processes them). The result has `rowcount`.

    When nothing listens to the statements (`_watched`) and `connection` has begun a
    transaction, the SQL goes to the driver's connection directly (SQLAlchemy docs,
    "Working with Driver SQL and Raw DBAPI Connections"), inside that transaction:
    SQLAlchemy's execution context and cursor result cost about three times what SQLite
    spends running a one-row statement, and about 50 µs of a PostgreSQL statement's 150
    (docs/pipeline.md, "Statements"). Otherwise it goes through
    `Connection.exec_driver_sql`, so the statement events see it. Either way errors are
    SQLAlchemy's (e.g. `IntegrityError`), and a lost connection empties the pool.

    Raises:
        ValueError: a statement whose SQL depends on the values (an expanding `IN` of bound
            values): give its values as literals.
        sqlalchemy.exc.DBAPIError: the database refused the statement (its subclasses:
            `IntegrityError`, `OperationalError`, ...).
    """
    return _run(connection, _compile(connection, key, build), params)


def _run(connection: Connection, compiled: _Compiled, params: Mapping[str, Any]
         ) -> Result[Any]:
    """Send `compiled` with `params` processed (`execute_compiled`); rows unprocessed."""
    values = {**compiled.fixed, **params}
    for name, process in compiled.processors.items():
        if name in params:
            values[name] = process(params[name])
    if connection.in_transaction() and not _watched(connection):
        return _on_driver(connection, compiled, values)
    return connection.exec_driver_sql(compiled.sql, values)


def execute_core(session: Session, statement: Executable,
                 params: Mapping[str, Any]) -> Result[Any]:
    """`session.execute(statement, params)` for a Core statement kept at module level (it is
    compiled once per database driver, keyed by the statement object), sent as
    `execute_compiled` sends it: the same rows (each value through its type's result
    processor, as SQLAlchemy gives it), `rowcount`, errors and events, with less CPU. Like
    `session.execute` of a Core statement, it does not flush the session first.

    Raises:
        ValueError: the statement has an expanding `IN` of bound values.
        sqlalchemy.exc.DBAPIError: the database refused the statement.
    """
    def build(_dialect: str) -> ClauseElement:
        return statement  # type: ignore[return-value]

    return _processed(session.connection(), ("tokens.base.execute_core", statement), build,
                      params)


def _processed(connection: Connection, key: Hashable, build: Callable[[str], ClauseElement],
               params: Mapping[str, Any]) -> Result[Any]:
    """`execute_compiled`, each result value through its type's result processor."""
    compiled = _compile(connection, key, build)
    result = _run(connection, compiled, params)
    processors = compiled.results
    if processors is None:
        return result
    rows = [tuple(value if process is None or value is None else process(value)
                  for process, value in zip(processors, row, strict=True))
            for row in result.fetchall()]
    processed: IteratorResult[Any] = IteratorResult(compiled.metadata,
                                                    iter(rows))
    processed.rowcount = result.rowcount  # type: ignore[attr-defined]
    return processed


def _watched(connection: Connection) -> bool:
    """Whether anything would see a statement on `connection` that the driver path skips:
    statement or execution events, or SQL echo."""
    dispatch, dialect = connection.dispatch, connection.dialect
    # `_echo` is what `Connection` itself checks before logging a statement (SQLAlchemy 2.0,
    # pinned in requirements.txt).
    return bool(connection._echo or dispatch.before_cursor_execute
                or dispatch.after_cursor_execute or dialect.dispatch.do_execute
                or dialect.dispatch.handle_error)


def execute_plain(connection: Connection, sql: str) -> None:
    """`connection.exec_driver_sql(sql)` for a statement without parameters or rows
    (SQLite's `BEGIN IMMEDIATE`, `app.extensions.configure_sqlite`). On SQLite, when nothing
    watches the statements (`_watched`), it goes straight to the driver's connection, as
    `execute_compiled` sends its statements: a few µs instead of about 30.

    Raises:
        sqlalchemy.exc.DBAPIError: the database refused it (a lock not had within the busy
            timeout is `OperationalError`, "database is locked").
    """
    if connection.dialect.name != "sqlite" or _watched(connection):
        connection.exec_driver_sql(sql)
        return
    dbapi = connection.dialect.loaded_dbapi
    try:
        connection.connection.driver_connection.execute(sql).close()  # type: ignore[union-attr]
    except dbapi.Error as exc:
        raise _driver_error(connection, sql, None, exc) from exc


def _driver_error(connection: Connection, sql: str, values: dict[str, Any] | None,
                  exc: Exception) -> StatementError:
    """The driver's error `exc` as SQLAlchemy's (`IntegrityError`, `OperationalError`, ...),
    as `Connection.execute` raises it."""
    dbapi = connection.dialect.loaded_dbapi
    return DBAPIError.instance(sql, values, exc, dbapi.Error,
                               hide_parameters=connection.engine.hide_parameters,
                               dialect=connection.dialect, ismulti=False)


def _pending(session: Session) -> bool:
    """Whether the session has changes not yet flushed (a query would flush them first)."""
    return bool(session.new or session.deleted or session.dirty)


def _on_driver(connection: Connection, compiled: _Compiled,
               values: dict[str, Any]) -> Result[Any]:
    """Run `compiled` on the driver's connection inside the transaction `connection` has
    begun (psycopg sends its `BEGIN` before the first statement, as under `exec_driver_sql`;
    on SQLite SQLAlchemy's begin sent `BEGIN IMMEDIATE`). The driver's error goes through
    SQLAlchemy's own handling, as `Connection.execute` raises it: wrapped (`IntegrityError`,
    `OperationalError`, ...), and a lost connection invalidated with the pool (SQLAlchemy
    2.0, pinned: the `Connection._handle_dbapi_exception` that `exec_driver_sql` calls)."""
    driver: Any = connection.connection.driver_connection
    dbapi = connection.dialect.loaded_dbapi
    cursor = None
    try:
        cursor = driver.execute(compiled.sql, values)
        try:
            # The compiled statement knows whether it returns rows: psycopg builds the
            # description's column objects anew at each look.
            rows = cursor.fetchall() if compiled.keys or cursor.description else []
            rowcount = cursor.rowcount
        finally:
            cursor.close()
    except dbapi.Error as exc:
        connection._handle_dbapi_exception(exc, compiled.sql, values, cursor, None)
    result: IteratorResult[Any] = IteratorResult(compiled.metadata,
                                                 iter(rows))
    result.rowcount = rowcount  # type: ignore[attr-defined]
    return result


_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def literal_words(*words: str) -> list[Any]:
    """SQL string literals of plain lower-case words (`'active'`), for the `IN (...)` and
    `=` of a statement run through `execute_compiled` (whose SQL cannot depend on values),
    and for a condition a partial index must match as written.

    Raises:
        ValueError: a word that is not a plain lower-case identifier.
    """
    for word in words:
        if not _IDENTIFIER.match(word):
            raise ValueError(f"not a plain word: {word!r}")
    return [literal_column(f"'{word}'", String) for word in words]


def insert_values(table: Table, columns: tuple[str, ...], *,
                  returning: tuple[str, ...] = ()) -> Insert:
    """`INSERT INTO table (c1, ...) VALUES (:c1, ...) [RETURNING r1, ...]` with each column
    bound to a parameter of its name and type, for a statement kept at module level and sent
    with `execute_core`. A bare `insert(table)` takes its column list from each call's
    parameters, so SQLAlchemy compiles it per call's keys and `execute_core` cannot keep it.

    Raises:
        KeyError: a name that is not a column of `table`.
    """
    statement = insert(table).values(
        {name: bindparam(name, type_=table.c[name].type) for name in columns})
    if returning:
        return statement.returning(*(table.c[name] for name in returning))
    return statement


@functools.lru_cache(maxsize=256)
def insert_on_conflict(
    table: Table,
    columns: tuple[str, ...],
    conflict: tuple[str, ...],
    *,
    add: tuple[str, ...] = (),
    returning: tuple[str, ...] = (),
    prefix: str = "",
    prefix_params: tuple[BindParameter[Any], ...] = (),
) -> TextClause | TextualSelect:
    """One `INSERT ... ON CONFLICT` statement that reads the same on PostgreSQL and SQLite
    (3.35 and later), built once per shape and cached by SQLAlchemy like any other statement.

    SQLAlchemy's dialect `insert().on_conflict_do_*()` constructs opt out of its statement
    cache (`inherit_cache = False`), so each execution compiles them anew: 0.3 to 0.7 ms of
    CPU each on this project's hot path (measured with SQLAlchemy 2.0.58). This writes the
    same SQL as a `text()` whose parameters carry the columns' types (so `UTCDateTime`, JSON
    and the like are processed as in any ORM statement).

        INSERT INTO t (c1, c2, ...) VALUES (:c1, :c2, ...)
        ON CONFLICT (k1, ...) DO NOTHING                                 -- `add` empty
        ON CONFLICT (k1, ...) DO UPDATE SET a = t.a + excluded.a, ...    -- `add` given
        [RETURNING r1, ...]

    Args:
        table: the table (`Model.__table__`).
        columns: the columns given, as parameters of the same names.
        conflict: the columns of the unique constraint or primary key that decides a conflict.
        add: columns that a conflicting row adds to the stored one (rollup counters).
        returning: columns returned; with DO NOTHING, a conflict returns no row.
        prefix: SQL written before the INSERT, e.g. a `WITH` of data-modifying CTEs on
            PostgreSQL; a constant of the caller's, never built from input.
        prefix_params: the typed bound parameters `prefix` uses.

    Raises:
        ValueError: a name that is not a plain lower-case identifier, or not a column.
    """
    for name in (table.name, *columns, *conflict, *add, *returning):
        if not _IDENTIFIER.match(name):
            raise ValueError(f"not a plain identifier: {name!r}")
    for name in (*columns, *conflict, *add, *returning):
        if name not in table.c:
            raise ValueError(f"{table.name} has no column {name!r}")
    sql = (f"{prefix}INSERT INTO {table.name} ({', '.join(columns)}) "
           f"VALUES ({', '.join(':' + c for c in columns)}) "
           f"ON CONFLICT ({', '.join(conflict)}) ")
    if add:
        sql += "DO UPDATE SET " + ", ".join(
            f"{c} = {table.name}.{c} + excluded.{c}" for c in add)
    else:
        sql += "DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    statement = text(sql).bindparams(
        *[bindparam(c, type_=table.c[c].type) for c in columns], *prefix_params)
    if returning:
        return statement.columns(*[table.c[c] for c in returning])
    return statement


def write_changes(session: Session, *objects: Any) -> None:
    """Write each persistent object's pending column changes now, as one
    `UPDATE table SET ... WHERE <primary key>` per object (`execute_compiled`: compiled once
    per table and set of columns), and mark them as committed, so that the next flush has
    nothing left to do for it.

    The ORM's unit of work costs about as much CPU per changed object as several Core
    statements (sorting, per-mapper bookkeeping, events); a turn of the router changes its
    contact and message row and nothing else, and pays it in each of its two commits
    (docs/pipeline.md, "Statements"). An object this cannot write alone is left to the flush,
    unchanged: not persistent, a change to a relationship or other non-column attribute, or
    a SQL expression as a value. Objects with no pending change send nothing, and a column
    set again to the value it had is left out, as the flush leaves it out. A rollback
    expires the objects as usual, so nothing written here outlives its transaction in the
    session either.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the UPDATE failed (the transaction is then unusable,
            as after a failed flush).
    """
    from sqlalchemy import inspect as inspect_state

    for obj in objects:
        if obj is None:
            continue
        state = inspect_state(obj)
        if not state.modified or not state.persistent or not state.committed_state:
            continue
        changed = _column_changes(state)
        if changed is None:
            continue
        if not changed:  # every column set again to the value it had: nothing to write
            state._commit_all(state.dict, session.identity_map)
            continue
        mapper, values = state.mapper, state.dict
        columns = list(changed)
        table = mapper.local_table
        keys = mapper.primary_key
        if any(column.table is not table for column in (*columns, *keys)):
            continue  # a mapping over several tables: the flush knows how
        names = tuple(sorted(column.name for column in columns))
        params = {f"v_{column.name}": value for column, value in changed.items()}
        params.update((f"k_{column.name}", value)
                      for column, value in zip(keys, state.identity, strict=True))

        def build(_dialect: str, table: Any = table, names: tuple[str, ...] = names,
                  keys: Any = keys) -> ClauseElement:
            from sqlalchemy import and_, update

            return (update(table)
                    .where(and_(*(column == bindparam(f"k_{column.name}", type_=column.type)
                                  for column in keys)))
                    .values({name: bindparam(f"v_{name}", type_=table.c[name].type)
                             for name in names}))

        execute_compiled(session.connection(), ("tokens.base.write_changes", table.name, names),
                         build, params)
        state._commit_all(values, session.identity_map)


def load_compiled(session: Session, model: type[Any], key: Hashable,
                  where: Mapping[str, Any]) -> Any | None:
    """The one `model` row whose columns equal `where` (column name -> value; the columns
    of a unique constraint), read with one compiled SELECT (`execute_compiled`) and given
    to the session as a persistent object, as a query would give it; None when no row
    matches.

    A query through the ORM costs several times the CPU of the SELECT it sends (compiling
    the cache key, the loading context, the row-to-object machinery); the router reads its
    contact this way at the start of every turn (`bot.contacts.find_contact`). Where this
    would not give what the query gives, it runs the query instead: when the session has
    changes not yet flushed (the query would flush them first), and when the row's object
    is already in the session (the query refreshes it if expired). `key` names the
    statement in the compiled cache; `where` must always name the same columns for it.

    Raises:
        sqlalchemy.exc.MultipleResultsFound: more than one row matches.
    """
    from sqlalchemy import and_, select
    from sqlalchemy import inspect as inspect_state

    mapper = inspect_state(model)
    table = mapper.local_table

    def query() -> Any | None:
        return session.scalars(select(model).filter_by(**where)).one_or_none()

    if _pending(session):
        return query()
    columns = [table.c[name] for name in where]

    def build(_dialect: str) -> ClauseElement:
        return select(*table.c).where(and_(*(
            column == bindparam(f"w_{column.name}", type_=column.type) for column in columns)))

    rows = _processed(session.connection(), ("tokens.base.load_compiled", table.name, key),
                      build, {f"w_{name}": value for name, value in where.items()}).fetchall()
    if not rows:
        return None
    if len(rows) > 1:
        from sqlalchemy.exc import MultipleResultsFound
        raise MultipleResultsFound(f"more than one {table.name} row matches {sorted(where)}")
    keys, primary_key = _attribute_keys(model)
    values = dict(zip(keys, rows[0], strict=True))  # the SELECT's columns: the table's
    if Session.identity_key(model, tuple(values[k] for k in primary_key)) in session.identity_map:
        return query()
    return known_row(session, model, values)


def known_row(session: Session, model: type[Any], values: Mapping[str, Any]) -> Any:
    """The stored row of `model` whose attributes are `values` (attribute key -> value, every
    column), given to `session` as a persistent object as if it had been loaded: no statement,
    no flush to come. Used for a row just written by a Core `INSERT ... RETURNING` or read by
    a compiled SELECT.

    The object is built as SQLAlchemy's loader builds a loaded one (`ClassManager.new_instance`,
    the values straight into its instance dict), not through the constructor, whose attribute
    events cost several µs a column; then `make_transient_to_detached` gives it its identity
    and marks the values as the database's, and `session.add` attaches it.
    """
    obj = manager_of_class(model).new_instance()
    instance_state(obj).dict.update(values)
    make_transient_to_detached(obj)
    session.add(obj)
    return obj


def load_joined(session: Session, core: Executable, orm: Executable,
                models: tuple[type[Any], ...], params: Mapping[str, Any]) -> tuple[Any, ...]:
    """The objects of `models` from the one row that `orm` (an ORM SELECT of `models` with
    `populate_existing`) finds, as `session.execute(orm, params).one()` gives them, read with
    `core` instead: a module-level Core SELECT of every column of each model's table, the
    tables in the order of `models` (`execute_core`: compiled once, no ORM loading). An
    object already in the session takes the row's values as loaded, as `populate_existing`
    gives them (`loaded_row`). With changes not yet flushed, `orm` itself runs (it flushes
    them first).

    Raises:
        sqlalchemy.exc.NoResultFound: no row; MultipleResultsFound: more than one.
    """
    if _pending(session):
        return tuple(session.execute(orm, params).one())
    row = execute_core(session, core, params).one()
    objects = []
    at = 0
    for model in models:
        keys, _ = _attribute_keys(model)
        objects.append(loaded_row(session, model, dict(zip(keys, row[at:at + len(keys)],
                                                           strict=True))))
        at += len(keys)
    return tuple(objects)


def loaded_row(session: Session, model: type[Any], values: Mapping[str, Any]) -> Any:
    """The session's object for the stored row of `model` whose attributes are `values`
    (attribute key -> value, every column), as a query with `populate_existing` gives it: the
    object already in the session, refreshed with `values` as SQLAlchemy's loader refreshes
    it, else a new persistent one (`known_row`). For a session without changes to flush (an
    object's pending changes would be overwritten, as `populate_existing` overwrites them)."""
    _, primary_key = _attribute_keys(model)
    identity = tuple(values[key] for key in primary_key)
    found = session.identity_map.get(Session.identity_key(model, identity))
    if found is None:
        return known_row(session, model, values)
    # As SQLAlchemy's loader refreshes an object with `populate_existing` (2.0,
    # `orm/loading.py`: the values into the instance dict, then `_commit_all`, which marks
    # them loaded and the object unexpired and unmodified); `set_committed_value` for each
    # column is the public equivalent and costs about 1.5 µs a column more.
    state = instance_state(found)
    state.dict.update(values)
    state._commit_all(state.dict, session.identity_map)
    return found


# model -> (its attribute keys in its table's column order, its primary key's attribute keys)
_ATTRIBUTE_KEYS: dict[type[Any], tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _attribute_keys(model: type[Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    known = _ATTRIBUTE_KEYS.get(model)
    if known is None:
        from sqlalchemy import inspect as inspect_state

        mapper = inspect_state(model)
        known = (tuple(mapper.get_property_by_column(column).key
                       for column in mapper.local_table.columns),
                 tuple(mapper.get_property_by_column(column).key
                       for column in mapper.primary_key))
        _ATTRIBUTE_KEYS[model] = known
    return known


def get_compiled(session: Session, model: type[Any], ident: Any) -> Any | None:
    """`session.get(model, ident)` for a model with a one-column primary key: the object, or
    None. When the object is not in the session and the session has no changes to flush, the
    SELECT is `load_compiled`'s (compiled once, a fraction of the ORM load's CPU); otherwise
    it is `session.get` itself, which gives a loaded object without a statement, refreshes an
    expired one and flushes pending changes first.

    Raises:
        ValueError: `model`'s primary key has more than one column.
    """
    from sqlalchemy import inspect as inspect_state

    mapper = inspect_state(model)
    if len(mapper.primary_key) != 1:
        raise ValueError(f"{model.__name__} has a composite primary key: use session.get")
    if (_pending(session)
            or Session.identity_key(model, (ident,)) in session.identity_map):
        return session.get(model, ident)
    column = mapper.primary_key[0]
    return load_compiled(session, model, "tokens.base.get_compiled", {column.name: ident})


def _column_changes(state: Any) -> dict[Any, Any] | None:
    """An object's net column changes (column -> new value) for `write_changes`, leaving out
    a column set again to the value it had, as the flush does; None when one of its changes
    is not a plain column value (a relationship, a SQL expression), left to the flush."""
    from sqlalchemy.orm import ColumnProperty
    from sqlalchemy.orm.base import NO_VALUE

    mapper, values = state.mapper, state.dict
    changed: dict[Any, Any] = {}
    for name, old in state.committed_state.items():
        prop = mapper.attrs.get(name)
        if not isinstance(prop, ColumnProperty) or len(prop.columns) != 1 \
                or name not in values or isinstance(values[name], ClauseElement):
            return None
        if old is NO_VALUE or not state.manager[name].impl.is_equal(values[name], old):
            changed[prop.columns[0]] = values[name]
    return changed

