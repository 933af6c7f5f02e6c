"""Migrations: one head, upgrade -> downgrade -> upgrade, and the models match the schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

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
