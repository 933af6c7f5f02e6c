"""payments: pending refunds and disputes, invoice charges (issue #16)

`provider_payments`: one row per payment at the provider (its payment intent, or its charge
when it has none), with the highest refund the provider reported and the money gone that
tokens and revenue already reflect. "pending" until its checkout or premium invoice is known
(a refund or a dispute that came first), then "applied". `payment_disputes`: each dispute of
a payment, its state and the hold that freezes tokens while it is open. `invoices`: each paid
premium invoice that granted a month, with what it was paid and granted, so that its refund
or dispute can be clawed back in proportion. `subscriptions.cancel_at` and
`subscriptions.notified` (the state the person was last told of).

Backfill: every completed checkout with a payment intent (or a charge) gets its applied
payment, refunded and settled = its `refunded_cents` (the refunds already reversed). Disputes
and invoices from before are not backfilled: their events named no charge we kept. Existing
subscriptions get the `notified` state their status stands for, so that nobody is told again
what they were told already.

Downgrade drops the three tables and the two columns.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 21:10:00

"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

PREMIUM = ('trialing', 'active')

checkouts = sa.table(
    'checkouts',
    sa.column('id', sa.Integer()),
    sa.column('provider', sa.String()),
    sa.column('status', sa.String()),
    sa.column('payment_intent', sa.String()),
    sa.column('charge_id', sa.String()),
    sa.column('refunded_cents', sa.BigInteger()),
    sa.column('completed_at', sa.DateTime(timezone=True)),
)
payments = sa.table(
    'provider_payments',
    sa.column('provider', sa.String()),
    sa.column('external_id', sa.String()),
    sa.column('charge_id', sa.String()),
    sa.column('status', sa.String()),
    sa.column('checkout_id', sa.Integer()),
    sa.column('refunded_cents', sa.BigInteger()),
    sa.column('settled_cents', sa.BigInteger()),
    sa.column('created_at', sa.DateTime(timezone=True)),
    sa.column('updated_at', sa.DateTime(timezone=True)),
)
subscriptions = sa.table(
    'subscriptions',
    sa.column('id', sa.Integer()),
    sa.column('status', sa.String()),
    sa.column('past_due_since', sa.DateTime(timezone=True)),
    sa.column('updated_at', sa.DateTime(timezone=True)),
    sa.column('notified', sa.String()),
)


def _epoch(moment):
    """Unix seconds of a stored time (SQLite hands back naive UTC, PostgreSQL aware)."""
    if isinstance(moment, str):  # pragma: no cover - a driver without type processing
        moment = sa.DateTime().result_processor(op.get_bind().dialect, None)(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def upgrade():
    op.create_table('invoices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('subscription_id', sa.String(length=255), nullable=True),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=False),
    sa.Column('paid_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('amount_cents > 0 AND tokens >= 0',
                       name=op.f('ck_invoices_amounts_in_range')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'],
                            name=op.f('fk_invoices_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoices')),
    sa.UniqueConstraint('external_id', name=op.f('uq_invoices_external_id'))
    )
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invoices_account_id'), ['account_id'], unique=False)

    op.create_table('provider_payments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('charge_id', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('checkout_id', sa.Integer(), nullable=True),
    sa.Column('invoice_id', sa.Integer(), nullable=True),
    sa.Column('refunded_cents', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('settled_cents', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'applied')",
                       name=op.f('ck_provider_payments_status_known')),
    sa.CheckConstraint("(status = 'pending' AND checkout_id IS NULL AND invoice_id IS NULL)"
                       " OR (status = 'applied' AND (checkout_id IS NULL)"
                       " <> (invoice_id IS NULL))",
                       name=op.f('ck_provider_payments_owner_matches_status')),
    sa.CheckConstraint('refunded_cents >= 0 AND settled_cents >= 0',
                       name=op.f('ck_provider_payments_amounts_in_range')),
    sa.ForeignKeyConstraint(['checkout_id'], ['checkouts.id'],
                            name=op.f('fk_provider_payments_checkout_id_checkouts')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'],
                            name=op.f('fk_provider_payments_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_provider_payments')),
    sa.UniqueConstraint('external_id', name=op.f('uq_provider_payments_external_id'))
    )
    with op.batch_alter_table('provider_payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provider_payments_charge_id'), ['charge_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_provider_payments_checkout_id'), ['checkout_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_provider_payments_invoice_id'), ['invoice_id'],
                              unique=False)

    op.create_table('payment_disputes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('payment_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('hold_key', sa.String(length=200), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('inquiry', 'open', 'won', 'lost', 'closed')",
                       name=op.f('ck_payment_disputes_state_known')),
    sa.CheckConstraint('amount_cents >= 0', name=op.f('ck_payment_disputes_amount_in_range')),
    sa.ForeignKeyConstraint(['payment_id'], ['provider_payments.id'],
                            name=op.f('fk_payment_disputes_payment_id_provider_payments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_disputes')),
    sa.UniqueConstraint('external_id', name=op.f('uq_payment_disputes_external_id'))
    )
    with op.batch_alter_table('payment_disputes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_disputes_payment_id'), ['payment_id'],
                              unique=False)

    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cancel_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('notified', sa.String(length=64), nullable=True))

    bind = op.get_bind()
    rows = bind.execute(sa.select(
        checkouts.c.id, checkouts.c.provider, checkouts.c.payment_intent, checkouts.c.charge_id,
        checkouts.c.refunded_cents, checkouts.c.completed_at,
    ).where(checkouts.c.status == 'completed',
            sa.or_(checkouts.c.payment_intent.isnot(None), checkouts.c.charge_id.isnot(None)))
     .order_by(checkouts.c.id)).all()
    seen = set()
    for checkout_id, provider, intent, charge, refunded, completed_at in rows:
        external_id = intent or charge
        if external_id in seen:  # pragma: no cover - one payment intent per checkout
            continue
        seen.add(external_id)
        completed_at = completed_at or datetime.now(timezone.utc)
        bind.execute(payments.insert().values(
            provider=provider, external_id=external_id, charge_id=charge, status='applied',
            checkout_id=checkout_id, refunded_cents=refunded or 0, settled_cents=refunded or 0,
            created_at=completed_at, updated_at=completed_at))

    for sub_id, status, since in bind.execute(sa.select(
            subscriptions.c.id, subscriptions.c.status, subscriptions.c.past_due_since)).all():
        if status in PREMIUM:
            told = 'active'
        elif status == 'past_due' and since is not None:
            told = f'past_due:{_epoch(since)}'
        elif status in ('incomplete', 'past_due'):
            told = None
        else:
            told = 'ended'
        bind.execute(subscriptions.update().where(subscriptions.c.id == sub_id)
                     .values(notified=told))


def downgrade():
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_column('notified')
        batch_op.drop_column('cancel_at')

    with op.batch_alter_table('payment_disputes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_disputes_payment_id'))
    op.drop_table('payment_disputes')

    with op.batch_alter_table('provider_payments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provider_payments_invoice_id'))
        batch_op.drop_index(batch_op.f('ix_provider_payments_checkout_id'))
        batch_op.drop_index(batch_op.f('ix_provider_payments_charge_id'))
    op.drop_table('provider_payments')

    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invoices_account_id'))
    op.drop_table('invoices')
