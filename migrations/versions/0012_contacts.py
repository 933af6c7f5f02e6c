"""contacts: the person's language (issue #15); tier_states: the daily budget of BALANCE/BUY
replies past the cutoff (issue #16)

`contacts.language`: "en", "es", or NULL until one of the person's messages is clearly in a
language (bot.contacts.note_language). `language_candidate`: the other language of their last
clear message (a second in a row switches). `language_chosen_at`: when they chose with
LANGUAGE / IDIOMA (detection then leaves it alone). Existing contacts start NULL: their next
clear message sets it, and until then each reply follows the message's own language.

Downgrade drops the three columns (the replies go back to English).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 21:10:00

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('language', sa.String(length=2), nullable=True))
        batch_op.add_column(sa.Column('language_candidate', sa.String(length=2), nullable=True))
        batch_op.add_column(sa.Column('language_chosen_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.create_check_constraint(
            'ck_contacts_language_known', "language IS NULL OR language IN ('en', 'es')")
        batch_op.create_check_constraint(
            'ck_contacts_language_candidate_known',
            "language_candidate IS NULL OR language_candidate IN ('en', 'es')")
    # BALANCE/BUY/BUY PREMIUM replies past the cutoff: their own daily budget (issue #16).
    with op.batch_alter_table('tier_states', schema=None) as batch_op:
        batch_op.add_column(sa.Column('billing_replies', sa.Integer(), server_default='0',
                                      nullable=False))


def downgrade():
    with op.batch_alter_table('tier_states', schema=None) as batch_op:
        batch_op.drop_column('billing_replies')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_constraint('ck_contacts_language_candidate_known', type_='check')
        batch_op.drop_constraint('ck_contacts_language_known', type_='check')
        batch_op.drop_column('language_chosen_at')
        batch_op.drop_column('language_candidate')
        batch_op.drop_column('language')
