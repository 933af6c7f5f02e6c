"""allergies: what a person said they are allergic to, remembered on the contact

`contacts.allergies` (NULL, or comma-separated keys: exclusion keys such as `peanut` and
`diet:<key>` for a medical diet such as `diet:gluten_free`; `bot.allergies`). It is the
person's own statement, kept so that every later answer leaves those foods out and an answer
that does not is never charged; it goes with the contact row when the person is forgotten,
and FORGET ALLERGIES clears it. `messages.outcome` may be `allergies` (the ALLERGIES and
FORGET ALLERGIES commands): `ck_messages_outcome_known` lists it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 19:45:00

"""
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

OLD_KINDS = (
    'duplicate', 'flooded', 'opted_out', 'suspended', 'throttled', 'opt_out', 'opt_in', 'help',
    'no_text', 'balance', 'buy', 'premium', 'auto_topup', 'account', 'more', 'language',
    'small_talk', 'insufficient', 'refused', 'offers', 'queued', 'failed', 'answered',
)
NEW_KINDS = OLD_KINDS + ('allergies',)


@contextmanager
def _foreign_keys_off():
    """SQLite: batch mode copies `messages`, which other rows reference, so foreign keys are
    off around the copy (the procedure of 0016). A no-op elsewhere."""
    bind = op.get_bind()
    if bind.dialect.name != 'sqlite':
        yield
        return
    bind.exec_driver_sql('COMMIT')
    bind.exec_driver_sql('PRAGMA foreign_keys=OFF')
    bind.exec_driver_sql('BEGIN IMMEDIATE')
    yield
    broken = bind.exec_driver_sql('PRAGMA foreign_key_check').fetchall()
    if broken:
        raise RuntimeError(f'foreign keys broken by the migration: {broken[:5]}')
    bind.exec_driver_sql('COMMIT')
    bind.exec_driver_sql('PRAGMA foreign_keys=ON')
    bind.exec_driver_sql('BEGIN IMMEDIATE')


def _outcome_check(kinds):
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_messages_outcome_known'), type_='check')
        batch_op.create_check_constraint(
            batch_op.f('ck_messages_outcome_known'),
            f"outcome IS NULL OR outcome IN ({', '.join(repr(k) for k in kinds)})")


def upgrade():
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allergies', sa.String(length=300), nullable=True))
    with _foreign_keys_off():
        _outcome_check(NEW_KINDS)


def downgrade():
    with _foreign_keys_off():
        op.execute("UPDATE messages SET outcome = 'answered' WHERE outcome = 'allergies'")
        _outcome_check(OLD_KINDS)
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_column('allergies')
