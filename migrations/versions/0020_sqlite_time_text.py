"""times: on SQLite, the times written as "...+00:00" text take SQLAlchemy's format

SQLite keeps a time as text, and SQLAlchemy writes it as "YYYY-MM-DD HH:MM:SS.ffffff" (naive
UTC). Until this revision, the statements sent through `tokens.base.execute_compiled`
(`write_changes`, the profit engine's recordings) gave SQLite the UTC time as Python prints
it, "YYYY-MM-DD HH:MM:SS[.ffffff]+00:00": the same instant, read back the same, but a
different text, so SQL comparisons of such a value with one in SQLAlchemy's format were wrong
within the same second (a hold expiring exactly at `now` was not yet due). The code now
writes SQLAlchemy's format; this rewrites the values written before.

Every DATETIME column of every table is rewritten, except those of the append-only entry
tables (`ledger_entries`, `cost_entries`, `revenue_entries`, whose triggers refuse any
UPDATE): their `created_at` is read back the same either way, and what the reports group
them by is their `month` and the rollups' `day`, not a comparison of that text.

PostgreSQL is unchanged (its times are `timestamptz`, never text). The downgrade changes
nothing: the new text is the one SQLAlchemy writes anyway.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 08:00:00

"""
from alembic import op
from sqlalchemy import inspect

# revision identifiers, used by Alembic.
revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

APPEND_ONLY = {'ledger_entries', 'cost_entries', 'revenue_entries'}


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != 'sqlite':
        return
    inspector = inspect(bind)
    for table in inspector.get_table_names():
        if table in APPEND_ONLY:
            continue
        for column in inspector.get_columns(table):
            if str(column['type']).upper() != 'DATETIME':
                continue
            name = column['name']
            # "YYYY-MM-DD HH:MM:SS" + (".ffffff" or ".000000"), without the offset.
            op.execute(
                f'UPDATE "{table}" SET "{name}" = substr("{name}", 1, 19)'
                f' || CASE WHEN substr("{name}", 20, 1) = \'.\''
                f' THEN substr("{name}", 20, 7) ELSE \'.000000\' END'
                f' WHERE "{name}" LIKE \'%+00:00\'')


def downgrade():
    pass
