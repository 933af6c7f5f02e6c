"""Migrations: one head, upgrade -> downgrade -> upgrade, and the models match the schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.config import PROJECT_ROOT
from app.extensions import db
from tokens.base import Base

TABLES = {
    "accounts", "ledger_entries", "ledger_lots", "ledger_holds", "pay_links", "contacts",
    "messages",
}


def test_exactly_one_head():
    config = AlembicConfig()
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    assert len(ScriptDirectory.from_config(config).get_heads()) == 1


def tables() -> set[str]:
    return set(inspect(db.engine).get_table_names())


def test_upgrade_downgrade_upgrade(app):
    assert tables() >= TABLES
    downgrade(revision="base")
    db.engine.dispose()
    assert not tables() & TABLES
    upgrade()
    assert tables() >= TABLES


def test_models_and_migrations_agree(app):
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "render_as_batch": True}
        )
        assert compare_metadata(context, Base.metadata) == []


def _rows(sql: str) -> list[tuple[object, ...]]:
    with db.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql))]


def test_0016_renames_tier_states_and_turns_refund_entries_into_reversals(app):
    # rename_levels: skip (this test writes the names of before 0016)
    """The data of 0016: a `tier_states` row moves to `level_states` (with constraints named
    after it), a debit's `refund` entries become `reversal` ones with their keys, the ledger
    stays append-only, and the downgrade puts everything back."""
    downgrade(revision="0015")
    db.engine.dispose()
    at = "2026-11-01 00:00:00"
    with db.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO accounts (id, public_id, balance, held, created_at)"
            " VALUES (1, 'acct_1', 10, 0, :at)"), {"at": at})
        connection.execute(text(
            "INSERT INTO ledger_entries (id, account_id, kind, bucket, amount, idempotency_key,"
            " operation_key, created_at) VALUES"
            " (1, 1, 'grant', 'free', 10, 'grant:1', 'grant:1', :at)"), {"at": at})
        connection.execute(text(
            "INSERT INTO ledger_lots (id, account_id, credit_entry_id, bucket, remaining)"
            " VALUES (1, 1, 1, 'free', 10)"))
        connection.execute(text(
            "INSERT INTO ledger_entries (id, account_id, kind, bucket, amount, idempotency_key,"
            " operation_key, lot_id, corrects_id, created_at) VALUES"
            " (2, 1, 'debit', 'free', -5, 'debit:SM1', 'debit:SM1', 1, NULL, :at),"
            " (3, 1, 'refund', 'free', 3, 'refund:SM1', 'refund:SM1', 1, 2, :at),"
            " (4, 1, 'refund', 'free', 2, 'refund:SM1#2', 'refund:SM1', 1, 2, :at)"),
            {"at": at})
        connection.execute(text(
            "INSERT INTO tier_states (account_id, free_replies, billing_replies, reply_day)"
            " VALUES (1, 2, 1, '2026-11-01')"))
    upgrade()
    db.engine.dispose()
    assert _rows("SELECT id, kind, idempotency_key, operation_key FROM ledger_entries"
                 " WHERE id > 2 ORDER BY id") == [
        (3, "reversal", "reversal:SM1", "reversal:SM1"),
        (4, "reversal", "reversal:SM1#2", "reversal:SM1")]
    assert _rows("SELECT account_id, free_replies, billing_replies, reply_day"
                 " FROM level_states") == [(1, 2, 1, "2026-11-01")]
    inspector = inspect(db.engine)
    assert "tier_states" not in inspector.get_table_names()
    assert inspector.get_pk_constraint("level_states")["name"] == "pk_level_states"
    assert [fk["name"] for fk in inspector.get_foreign_keys("level_states")] == [
        "fk_level_states_account_id_accounts"]
    assert "ck_messages_outcome_known" in {
        c["name"] for c in inspector.get_check_constraints("messages")}
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as connection:
        connection.execute(text("UPDATE ledger_entries SET memo = 'x' WHERE id = 3"))
    with pytest.raises(IntegrityError), db.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO ledger_entries (account_id, kind, bucket, amount, idempotency_key,"
            " operation_key, created_at) VALUES (1, 'refund', 'free', 1, 'k', 'k', :at)"),
            {"at": at})

    downgrade(revision="0015")
    db.engine.dispose()
    assert _rows("SELECT id, kind, idempotency_key, operation_key FROM ledger_entries"
                 " WHERE id > 2 ORDER BY id") == [
        (3, "refund", "refund:SM1", "refund:SM1"), (4, "refund", "refund:SM1#2", "refund:SM1")]
    assert _rows("SELECT account_id, free_replies FROM tier_states") == [(1, 2)]
    assert inspect(db.engine).get_pk_constraint("tier_states")["name"] == "pk_tier_states"
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as connection:
        connection.execute(text("DELETE FROM ledger_entries WHERE id = 3"))
    upgrade()


def test_0020_gives_sqlite_times_sqlalchemy_s_text(app):
    """Times written as "...+00:00" text before 0020 are rewritten in SQLAlchemy's format
    (with and without microseconds); the append-only entries are left as they are."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL keeps times as timestamptz")
    downgrade(revision="0019")
    db.engine.dispose()
    with db.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO accounts (id, public_id, balance, held, created_at)"
            " VALUES (1, 'acct_1', 0, 0, '2026-12-07 07:00:00+00:00')"))
        connection.execute(text(
            "INSERT INTO contacts (id, address, account_id, created_at, last_inbound_at)"
            " VALUES (1, '+15550001111', 1, '2026-12-07 07:00:00.000000',"
            " '2026-12-07 07:41:34.734251+00:00')"))
        connection.execute(text(
            "INSERT INTO cost_entries (account_id, month, kind, amount_musd, idempotency_key,"
            " created_at) VALUES (1, '2026-12', 'platform', 1, 'k',"
            " '2026-12-07 07:00:00+00:00')"))
    upgrade()
    db.engine.dispose()
    assert _rows("SELECT created_at FROM accounts") == [("2026-12-07 07:00:00.000000",)]
    assert _rows("SELECT created_at, last_inbound_at FROM contacts") == [
        ("2026-12-07 07:00:00.000000", "2026-12-07 07:41:34.734251")]
    assert _rows("SELECT created_at FROM cost_entries") == [("2026-12-07 07:00:00+00:00",)]


def _hold_indexes() -> set[str]:
    return {index["name"] for index in inspect(db.engine).get_indexes("ledger_holds")}


def test_0021_indexes_holds_by_account_status_expiry(app):
    """0021 replaces the index on `account_id` with (account_id, status, expires_at), and its
    downgrade puts the old one back."""
    downgrade(revision="0020")
    db.engine.dispose()
    assert "ix_ledger_holds_account_id" in _hold_indexes()
    assert "ix_ledger_holds_account_status_expiry" not in _hold_indexes()
    upgrade()
    db.engine.dispose()
    assert "ix_ledger_holds_account_id" not in _hold_indexes()
    assert "ix_ledger_holds_account_status_expiry" in _hold_indexes()


def test_0021_rebuilds_an_invalid_index_a_failed_concurrent_build_left(app):
    """An operator's `CREATE INDEX CONCURRENTLY` that failed leaves an invalid index of the
    name; 0021 builds it again instead of keeping it (and dropping the only valid one)."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("only PostgreSQL builds indexes concurrently")
    downgrade(revision="0020")
    db.engine.dispose()
    with db.engine.begin() as connection:
        connection.execute(text("CREATE INDEX ix_ledger_holds_account_status_expiry"
                                " ON ledger_holds (account_id, status, expires_at)"))
        # What a failed concurrent build leaves behind (the suite's server runs as superuser).
        connection.execute(text(
            "UPDATE pg_index SET indisvalid = false"
            " WHERE indexrelid = 'ix_ledger_holds_account_status_expiry'::regclass"))
    upgrade()
    db.engine.dispose()
    with db.engine.connect() as connection:
        assert connection.execute(text(
            "SELECT indisvalid FROM pg_index"
            " WHERE indexrelid = 'ix_ledger_holds_account_status_expiry'::regclass")).scalar()


def _ledger_functions() -> int:
    with db.engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM pg_proc WHERE proname IN ('ledger_capture', 'ledger_debit',"
            " 'ledger_draw_plan', 'ledger_post_draw')")).scalar())


def test_0022_creates_the_ledger_functions_and_its_downgrade_drops_them(app):
    """On PostgreSQL 0022 creates `ledger_capture`, `ledger_debit` and their shared draw
    (tokens.ledger's one-statement capture and debit); on SQLite it changes nothing."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the functions are PostgreSQL's")
    assert _ledger_functions() == 4
    downgrade(revision="0021")
    db.engine.dispose()
    assert _ledger_functions() == 0
    upgrade()
    db.engine.dispose()
    assert _ledger_functions() == 4
