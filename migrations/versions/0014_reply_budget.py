"""tier_states: one daily budget of free replies, HELP once a day, inbound floods, low-balance
alerts; pay links for auto top-up (issue #16)

`refusals` becomes `free_replies` (it now counts every reply the bot sends that exposure does
not gate: HELP, START/STOP confirmations, throttle notices, refusals, alerts, billing notices)
and `refusal_day` becomes `reply_day`; the counts of the day carry over. `help_day`: the UTC
day the full HELP answer went out (later HELPs that day get the one-line form).
`flooded_day`: the UTC day the person's inbound messages passed `inbound_flood_per_day`.
`alert_day`: the UTC day the last low-balance alert went out. `pay_links.purpose` may also be
"auto_topup" (a pack whose checkout saves the card for auto top-up).

Downgrade renames the two columns back and drops the two new ones.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 06:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('tier_states', schema=None) as batch_op:
        batch_op.alter_column('refusals', new_column_name='free_replies',
                              existing_type=sa.Integer(), existing_nullable=False,
                              existing_server_default='0')
        batch_op.alter_column('refusal_day', new_column_name='reply_day',
                              existing_type=sa.String(length=10), existing_nullable=True)
        batch_op.add_column(sa.Column('help_day', sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column('flooded_day', sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column('alert_day', sa.String(length=10), nullable=True))
    with op.batch_alter_table('pay_links', schema=None) as batch_op:
        batch_op.drop_constraint('purpose_known', type_='check')
        batch_op.create_check_constraint(
            'purpose_known', "purpose IN ('pack', 'premium', 'portal', 'auto_topup')")


def downgrade():
    # A link for auto top-up becomes a plain pack link (its checkout saves no card).
    op.execute("UPDATE pay_links SET purpose = 'pack' WHERE purpose = 'auto_topup'")
    with op.batch_alter_table('pay_links', schema=None) as batch_op:
        batch_op.drop_constraint('purpose_known', type_='check')
        batch_op.create_check_constraint('purpose_known',
                                         "purpose IN ('pack', 'premium', 'portal')")
    with op.batch_alter_table('tier_states', schema=None) as batch_op:
        batch_op.drop_column('alert_day')
        batch_op.drop_column('flooded_day')
        batch_op.drop_column('help_day')
        batch_op.alter_column('reply_day', new_column_name='refusal_day',
                              existing_type=sa.String(length=10), existing_nullable=True)
        batch_op.alter_column('free_replies', new_column_name='refusals',
                              existing_type=sa.Integer(), existing_nullable=False,
                              existing_server_default='0')
