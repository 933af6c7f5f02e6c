"""messages: partial indexes of the answers still queued and the replies on their way

The turn's standing read (`bot.router.steps.serialise`) sums, for the person's account, the
ceilings of the answers still queued (`outcome = 'queued'`) and the cost of the replies
stored or being sent and not yet accepted by the provider (`status IN ('pending',
'submitting', 'unknown')`). With only `ix_messages_contact_id`, both sums read every message
of the person's contacts on every turn, a cost that grows with their history; these
partial indexes hold only those few rows.

On PostgreSQL `CREATE INDEX` blocks writes to `messages` while it builds: on a large table,
create them beforehand with `CREATE INDEX CONCURRENTLY` under the same names and this
revision finds them (`IF NOT EXISTS`).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 21:45:00

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

QUEUED = "outcome = 'queued'"
ON_THE_WAY = "status IN ('pending', 'submitting', 'unknown')"


def upgrade():
    op.execute(f'CREATE INDEX IF NOT EXISTS ix_messages_queued ON messages (contact_id) '
               f'WHERE {QUEUED}')
    op.execute(f'CREATE INDEX IF NOT EXISTS ix_messages_on_the_way ON messages (contact_id) '
               f'WHERE {ON_THE_WAY}')


def downgrade():
    op.drop_index('ix_messages_on_the_way', table_name='messages')
    op.drop_index('ix_messages_queued', table_name='messages')
