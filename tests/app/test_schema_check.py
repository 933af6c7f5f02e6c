"""A database without the code's schema: every app command says `flask --app wsgi db upgrade`
in one line and exits 1, and `/readyz` answers 503 with the reason (app.schema)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from app.cli import OWN_DATABASE
from app.extensions import db
from app.schema import forget_cached_states, migration_heads, schema_state

UPGRADE = "flask --app wsgi db upgrade"
# One invocation of each kind of app command; all fail before touching their own tables.
COMMANDS = [
    ["chat", "--from", "+15551234567"],
    ["report"],
    ["tokens", "show", "+15551234567"],
    ["tokens", "grant", "+15551234567", "5", "--reason", "test"],
    ["tokens", "expire-holds"],
    ["admin", "create-user", "alice", "--password", "correct horse battery"],
    ["contacts", "forget", "+15551234567", "--yes"],
    ["messages", "sweep"],
    ["worker", "--burst"],
    ["affiliates", "import", "awin", "conversions.csv"],
]


def head(app: Flask) -> str:
    return ", ".join(migration_heads(app.extensions["migrate"].directory))


@pytest.fixture
def empty_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    """The app on a new, empty SQLite file: `db upgrade` never ran."""
    forget_cached_states()
    return make_app(database_url=f"sqlite:///{tmp_path / 'empty.db'}")


def assert_refused(app: Flask, args: list[str], line: str) -> None:
    result = app.test_cli_runner().invoke(args=args, input="hello\n")
    assert result.exit_code == 1, (args, result.output)
    assert result.stderr == f"Error: {line}\n", (args, result.output)
    assert "Traceback" not in result.output and result.stdout == "", (args, result.output)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args[:2]))
def test_every_command_refuses_a_database_without_schema_in_one_line(empty_app, args):
    assert_refused(empty_app, args, f"the database has no schema yet: run `{UPGRADE}`")


def test_readyz_names_the_missing_schema_then_is_ready_after_upgrade(empty_app):
    client = empty_app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable",
                                   "database": f"schema missing: run {UPGRADE}"}
    # Still 503 on the next probe: a missing schema is never remembered as ok.
    assert client.get("/readyz").status_code == 503

    upgrade()
    assert client.get("/readyz").get_json() == {"status": "ok", "database": "ok"}
    result = empty_app.test_cli_runner().invoke(args=["report", "--json"])
    assert result.exit_code == 0, result.output
    assert '"month"' in result.stdout
    chat = empty_app.test_cli_runner().invoke(args=["chat", "--from", "+15551234567"],
                                              input="BALANCE\n")
    assert chat.exit_code == 0 and "You have 100 tokens" in chat.output, chat.output


def test_an_older_revision_is_reported_as_behind(empty_app):
    upgrade(revision="0007")
    code_head = head(empty_app)
    assert code_head != "0007"
    state = schema_state(db.engine, empty_app.extensions["migrate"].directory)
    assert (state.status, state.current) == ("behind", ("0007",))
    assert_refused(empty_app, ["tokens", "expire-holds"],
                   f"the database is at revision 0007, the code needs {code_head}: "
                   f"run `{UPGRADE}`")
    response = empty_app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["database"] == (
        f"schema behind (at 0007, the code needs {code_head}): run {UPGRADE}")

    upgrade()
    assert empty_app.test_cli_runner().invoke(args=["tokens", "expire-holds"]).exit_code == 0
    assert empty_app.test_client().get("/readyz").status_code == 200


def test_a_revision_the_code_does_not_know_stops_commands_but_not_readiness(empty_app):
    upgrade()
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_newer'"))
    assert_refused(empty_app, ["report"],
                   f"the database is at revision 9999_newer, which this code's migrations "
                   f"(head {head(empty_app)}) do not know: it was migrated by newer code; "
                   f"deploy that code (or `{UPGRADE}` from it)")
    response = empty_app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok",
                                   "schema": "at 9999_newer, unknown to this code"}


def test_tables_without_a_revision_are_not_taken_for_a_schema(empty_app):
    with db.engine.begin() as connection:
        connection.execute(text("CREATE TABLE contacts (id INTEGER PRIMARY KEY)"))
    state = schema_state(db.engine, empty_app.extensions["migrate"].directory)
    assert state.status == "missing" and state.has_tables
    assert UPGRADE in (state.problem() or "") and "no alembic_version" in (state.problem() or "")


def test_readiness_remembers_an_ok_for_a_while_but_checks_again_after(app, database_url):
    """On both backends: a migrated database is ok; taken back to 0007 it is behind, which
    `/readyz` sees once the remembered ok is forgotten (30 s, or here at once)."""
    forget_cached_states()
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    db.session.remove()
    downgrade(revision="0007")
    db.engine.dispose()
    assert client.get("/readyz").status_code == 200  # the ok remembered for 30 s
    forget_cached_states()
    assert client.get("/readyz").status_code == 503
    assert app.test_cli_runner().invoke(args=["report"]).exit_code == 1


def test_commands_are_wrapped_once_and_migrate_and_simulate_are_left_alone(make_app, empty_app):
    again = make_app(database_url="sqlite://")  # register_cli runs again on the same commands
    report = again.cli.commands["report"]
    assert report.callback is not None
    assert getattr(report.callback, "_checks_schema", False)
    assert not getattr(report.callback.__wrapped__, "_checks_schema", False)  # type: ignore
    assert "simulate" in OWN_DATABASE
    assert not getattr(again.cli.commands["simulate"].callback, "_checks_schema", False)
    upgrade_command = again.cli.commands["db"].commands["upgrade"]  # type: ignore[attr-defined]
    assert not getattr(upgrade_command.callback, "_checks_schema", False)
    # `db upgrade` itself runs on the empty database and builds it.
    result = empty_app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert empty_app.test_cli_runner().invoke(args=["tokens", "expire-holds"]).exit_code == 0
