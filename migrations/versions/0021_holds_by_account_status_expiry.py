"""ledger_holds: one index on (account_id, status, expires_at) in place of (account_id)

Every `hold` checks, in its one conditional UPDATE, that none of the account's pending holds
is past its expiry (`tokens.ledger._HOLDS_DUE`). With only `ix_ledger_holds_account_id`,
that check read every hold the person ever had, captured and voided ones included: a cost
that grew with their history (262 holds for the busiest person of a 556-person simulated
month, the costliest statement per call there). The composite index finds the pending ones
past their expiry directly, and its first column still serves every look-up by account (the
foreign key, the admin page), so the table keeps the same number of indexes.

On PostgreSQL `CREATE INDEX` blocks writes to `ledger_holds` while it builds: on a large
table, create it beforehand with `CREATE INDEX CONCURRENTLY` under the same name and this
revision finds it (`IF NOT EXISTS`). A concurrent build that failed leaves an invalid index
of that name behind; this revision drops it and builds the index again rather than keep it.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 14:00:00

"""
from alembic import op
from sqlalchemy import text

# revision identifiers, used by Alembic.
revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


NAME = 'ix_ledger_holds_account_status_expiry'


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        invalid = bind.execute(text(
            'SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid'
            ' WHERE c.relname = :name'), {'name': NAME}).scalar()
        if invalid:
            op.execute(f'DROP INDEX {NAME}')
    op.execute(f'CREATE INDEX IF NOT EXISTS {NAME}'
               ' ON ledger_holds (account_id, status, expires_at)')
    op.drop_index('ix_ledger_holds_account_id', table_name='ledger_holds')


def downgrade():
    op.create_index('ix_ledger_holds_account_id', 'ledger_holds', ['account_id'], unique=False)
    op.drop_index(NAME, table_name='ledger_holds')
