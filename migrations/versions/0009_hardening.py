"""hardening: admin login delays, the consent log (backfilled with today's opt-outs), and the
keyed hashes of forgotten numbers

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:25:45

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('erased_contacts',
    sa.Column('address_hmac', sa.String(length=64), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_erased_contacts_account_id_accounts')),
    sa.PrimaryKeyConstraint('address_hmac', name=op.f('pk_erased_contacts'))
    )
    with op.batch_alter_table('erased_contacts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_erased_contacts_account_id'), ['account_id'], unique=False)

    op.create_table('consent_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('action', sa.String(length=8), nullable=False),
    sa.Column('keyword', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("action IN ('opt_out', 'opt_in')", name=op.f('ck_consent_events_action_known')),
    sa.CheckConstraint("channel IN ('sms', 'whatsapp')", name=op.f('ck_consent_events_channel_known')),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_consent_events_contact_id_contacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_events'))
    )
    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.create_index('ix_consent_events_contact_id_at', ['contact_id', 'at'], unique=False)

    with op.batch_alter_table('admin_users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_logins', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('last_failed_at', sa.DateTime(timezone=True), nullable=True))

    # The opt-outs standing today become the log's first entries.
    for channel in ('sms', 'whatsapp'):
        op.execute(
            "INSERT INTO consent_events (contact_id, channel, action, keyword, source, at) "
            f"SELECT id, '{channel}', 'opt_out', 'STOP', "
            "CASE WHEN opt_out_source LIKE 'twilio%' THEN 'twilio' ELSE 'keyword' END, "
            f"{channel}_opted_out_at FROM contacts WHERE {channel}_opted_out_at IS NOT NULL"
        )



def downgrade():
    with op.batch_alter_table('admin_users', schema=None) as batch_op:
        batch_op.drop_column('last_failed_at')
        batch_op.drop_column('failed_logins')

    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_events_contact_id_at')

    op.drop_table('consent_events')
    with op.batch_alter_table('erased_contacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_erased_contacts_account_id'))

    op.drop_table('erased_contacts')
