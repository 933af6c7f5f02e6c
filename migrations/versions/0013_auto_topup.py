"""auto top-up and low-balance alerts (issue #16): the `auto_topups` table

One row per account that asked AUTO ON or saved a card with consent: whether it is on, the
provider's customer and saved payment method (ids only, never card data), the pack it buys,
whether the current crossing of the threshold is armed, how many top-ups were started in all
(`crossings`, the n of the idempotency key `auto_topup:<account id>:<n>`) and in the month
(`month`, `month_count`), and the last failure. An auto top-up's payment itself is a
`checkouts` row with no pay link (`external_id` = its key), so no other table changes.

Downgrade drops the table (auto top-up turns off; saved cards stay at the provider).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 05:40:00

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('auto_topups',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('enabled', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('awaiting_card', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('customer_id', sa.String(length=255), nullable=True),
    sa.Column('payment_method_id', sa.String(length=255), nullable=True),
    sa.Column('pack_code', sa.String(length=32), nullable=False),
    sa.Column('armed', sa.Boolean(), server_default='1', nullable=False),
    sa.Column('crossings', sa.Integer(), server_default='0', nullable=False),
    sa.Column('month', sa.String(length=7), nullable=True),
    sa.Column('month_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_failure', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('crossings >= 0 AND month_count >= 0',
                       name=op.f('ck_auto_topups_counts_in_range')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'],
                            name=op.f('fk_auto_topups_account_id_accounts')),
    sa.PrimaryKeyConstraint('account_id', name=op.f('pk_auto_topups'))
    )


def downgrade():
    op.drop_table('auto_topups')
