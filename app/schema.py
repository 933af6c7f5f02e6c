"""Is the database's schema the one this code was written for?

The database records the Alembic revision it was migrated to (`alembic_version`); the code's
migrations (`migrations/versions`) end at a head. `schema_state(engine, directory)` compares
the two:

- "ok": the database is at the head;
- "missing": no revision recorded (no `alembic_version`, or an empty one): `db upgrade` was
  never run;
- "behind": at an older revision of these migrations: `db upgrade` was not run after a deploy;
- "unknown": at a revision these migrations do not know (newer code migrated it, or another
  branch).

Every app CLI command refuses to run unless the state is "ok" (`app.cli.register_cli`), and
`GET /readyz` answers 503 while it is "missing" or "behind" (`app.health`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect

UPGRADE_COMMAND = "flask --app wsgi db upgrade"
Status = Literal["ok", "missing", "behind", "unknown"]
# How long `cached_schema_state` trusts an "ok" (seconds); other states are never cached.
OK_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class SchemaState:
    """How the database's schema compares with the code's migrations.

    Attributes:
        status: "ok", "missing", "behind" or "unknown" (see the module docstring).
        current: the revisions recorded in the database (empty when "missing").
        head: the head revisions of the code's migrations (one, normally).
        has_tables: whether the database holds any table besides `alembic_version`.
    """

    status: Status
    current: tuple[str, ...]
    head: tuple[str, ...]
    has_tables: bool = True

    @property
    def ok(self) -> bool:
        """True when the database is at the code's head."""
        return self.status == "ok"

    @property
    def blocks_serving(self) -> bool:
        """True when requests cannot work: "missing" or "behind". An "unknown" (newer)
        revision does not stop the web: during a deploy, the old processes keep serving
        until they are replaced, as the migrations only add to the schema."""
        return self.status in ("missing", "behind")

    def problem(self) -> str | None:
        """None when "ok"; else one sentence naming the problem and the fix, e.g.
        "the database has no schema yet: run `flask --app wsgi db upgrade`"."""
        current, head = ", ".join(self.current), ", ".join(self.head)
        if self.status == "ok":
            return None
        if self.status == "missing":
            if self.has_tables:
                return ("the database has tables but no migration revision (no alembic_version):"
                        f" it was not built by `{UPGRADE_COMMAND}`; build it with that command"
                        " on an empty database")
            return f"the database has no schema yet: run `{UPGRADE_COMMAND}`"
        if self.status == "behind":
            return (f"the database is at revision {current}, the code needs {head}: "
                    f"run `{UPGRADE_COMMAND}`")
        return (f"the database is at revision {current}, which this code's migrations (head "
                f"{head}) do not know: it was migrated by newer code; deploy that code (or "
                f"`{UPGRADE_COMMAND}` from it)")

    def readiness(self) -> str:
        """The `database` value of `/readyz`: "ok" (also for an "unknown", newer revision),
        "schema missing: run flask --app wsgi db upgrade", or "schema behind (at 0007, the
        code needs 0009): run flask --app wsgi db upgrade"."""
        if self.status == "missing":
            return f"schema missing: run {UPGRADE_COMMAND}"
        if self.status == "behind":
            return (f"schema behind (at {', '.join(self.current)}, the code needs "
                    f"{', '.join(self.head)}): run {UPGRADE_COMMAND}")
        return "ok"


@lru_cache(maxsize=8)
def migration_heads(directory: str) -> tuple[str, ...]:
    """The head revisions of the Alembic migrations in `directory` (read once per process).

    Raises:
        ValueError: `directory` holds no Alembic migrations (no env.py / versions).
    """
    path = Path(directory)
    if not (path / "env.py").is_file():
        raise ValueError(f"{directory}: not an Alembic migrations folder (no env.py)")
    try:
        heads = ScriptDirectory(str(path)).get_heads()
    except CommandError as exc:
        raise ValueError(f"{directory}: cannot read the migrations: {exc}") from exc
    return tuple(sorted(heads))


@lru_cache(maxsize=8)
def _known_revisions(directory: str) -> frozenset[str]:
    script = ScriptDirectory(directory)
    return frozenset(revision.revision for revision in script.walk_revisions())


def schema_state(connectable: Engine | Connection, directory: str | Path) -> SchemaState:
    """Compare the database with the migrations in `directory`.

    Reads `alembic_version` and the table names; writes nothing.

    Args:
        connectable: the app's engine (one connection is opened and closed), or a connection
            to read on (e.g. `db.session.connection()`, so SQLite's write lock held by that
            session is no obstacle); its transaction is left as it was.
        directory: the migrations folder (`app.extensions["migrate"].directory`).

    Returns:
        The `SchemaState`.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or read.
        ValueError: `directory` holds no Alembic migrations.
    """
    folder = str(directory)
    head = migration_heads(folder)
    if isinstance(connectable, Engine):
        with connectable.connect() as connection:
            current, tables = _recorded(connection)
    else:
        current, tables = _recorded(connectable)
    has_tables = bool(tables - {"alembic_version"})
    if not current:
        return SchemaState("missing", (), head, has_tables=has_tables)
    if current == head:
        return SchemaState("ok", current, head)
    if set(current) <= _known_revisions(folder):
        return SchemaState("behind", current, head)
    return SchemaState("unknown", current, head)


def _recorded(connection: Connection) -> tuple[tuple[str, ...], set[str]]:
    """(the revisions in `alembic_version`, sorted; the table names) of the database."""
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables:
        return (), tables
    return tuple(sorted(MigrationContext.configure(connection).get_current_heads())), tables


# Engine URL (password hidden) + folder -> monotonic time until which an "ok" is trusted.
_ok_until: dict[tuple[str, str], float] = {}


def cached_schema_state(connectable: Engine | Connection, directory: str | Path,
                        ttl_seconds: float = OK_CACHE_SECONDS) -> SchemaState:
    """`schema_state`, but an "ok" is remembered for `ttl_seconds` per process (readiness
    probes call this every few seconds); any other state is read again on every call, so a
    missing schema shows at once and an upgrade is seen on the next call.

    Raises:
        The same as `schema_state`.
    """
    key = (connectable.engine.url.render_as_string(hide_password=True), str(directory))
    now = time.monotonic()
    if _ok_until.get(key, 0.0) > now:
        head = migration_heads(str(directory))
        return SchemaState("ok", head, head)
    state = schema_state(connectable, directory)
    if state.ok:
        _ok_until[key] = now + ttl_seconds
    else:
        _ok_until.pop(key, None)
    return state


def forget_cached_states() -> None:
    """Forget every remembered "ok" (tests; after a downgrade in the same process)."""
    _ok_until.clear()
