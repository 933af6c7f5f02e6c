"""a person's own account page (issue #20): `account_links`, `account_actions`, and the
receipt links of payments

`account_links`: one row per link sent by ACCOUNT / CUENTA: the SHA-256 of its token (never
the token), the account, when it was sent, its expiry (15 minutes later) and when it was last
opened. `account_actions`: one row per action taken from the page, keyed by the form's random
key (unique), so a double submit acts once; `result` is where the first submit sent the
person. `invoices.receipt_url`: Stripe's `hosted_invoice_url` of a paid premium invoice;
`provider_payments.receipt_url`: a charge's `receipt_url` (`charge.succeeded`,
`charge.refunded`).

Downgrade drops the two tables and the columns (the page's links stop working; receipts are
still at Stripe).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 08:00:00

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('account_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'],
                            name=op.f('fk_account_links_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account_links')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_account_links_token_hash'))
    )
    with op.batch_alter_table('account_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_links_account_id'), ['account_id'],
                              unique=False)

    op.create_table('account_actions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('result', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'],
                            name=op.f('fk_account_actions_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account_actions')),
    sa.UniqueConstraint('key', name=op.f('uq_account_actions_key'))
    )
    with op.batch_alter_table('account_actions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_actions_account_id'), ['account_id'],
                              unique=False)

    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('receipt_url', sa.Text(), nullable=True))
    with op.batch_alter_table('provider_payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('receipt_url', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('provider_payments', schema=None) as batch_op:
        batch_op.drop_column('receipt_url')
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.drop_column('receipt_url')
    with op.batch_alter_table('account_actions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_actions_account_id'))
    op.drop_table('account_actions')
    with op.batch_alter_table('account_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_links_account_id'))
    op.drop_table('account_links')
