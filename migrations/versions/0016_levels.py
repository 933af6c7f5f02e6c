"""levels: one word per concept (issue #18): `tier_states` becomes `level_states`, the ledger
entry kind `refund` becomes `reversal`, and `messages.outcome` gets a CHECK of its kinds

`tier_states` (the per-person throttles of the restriction levels) is renamed `level_states`,
with its primary key and foreign key named after the new table (`pk_level_states`,
`fk_level_states_account_id_accounts`). A ledger entry that gives back a debit whose reply was
not delivered is a `reversal` now ("refund" is only money back from the payment provider):
the CHECKs `kind_known` and `sign_matches_kind` of `ledger_entries` list `reversal` instead of
`refund`, and the existing entries are rewritten, their keys too (`refund:<MessageSid>` ->
`reversal:<MessageSid>`, `#2`... suffixes kept). Ledger entries are append-only (triggers of
0001 refuse UPDATE and DELETE): the triggers are dropped for that one UPDATE and created again.
`messages.outcome` gets `ck_messages_outcome_known` (NULL or one of `bot.models.OutcomeKind`;
the stored strings are unchanged).

Downgrade reverses each step (reversals become refunds again).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 17:00:00

"""
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

# The append-only triggers of ledger_entries, as 0001 creates them.
APPEND_ONLY = {
    'postgresql': {
        'drop': ['DROP TRIGGER ledger_entries_append_only ON ledger_entries'],
        'create': [
            """
            CREATE TRIGGER ledger_entries_append_only
            BEFORE UPDATE OR DELETE ON ledger_entries
            FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()
            """,
        ],
    },
    'sqlite': {
        'drop': [
            'DROP TRIGGER IF EXISTS ledger_entries_no_update',
            'DROP TRIGGER IF EXISTS ledger_entries_no_delete',
        ],
        'create': [
            """
            CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: UPDATE refused'); END
            """,
            """
            CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: DELETE refused'); END
            """,
        ],
    },
}

OLD_KINDS = ('grant', 'purchase', 'bonus', 'debit', 'refund', 'clawback', 'expiry', 'adjustment')
NEW_KINDS = ('grant', 'purchase', 'bonus', 'debit', 'reversal', 'clawback', 'expiry',
             'adjustment')
OUTCOME_KINDS = (
    'duplicate', 'flooded', 'opted_out', 'suspended', 'throttled', 'opt_out', 'opt_in', 'help',
    'no_text', 'balance', 'buy', 'premium', 'auto_topup', 'account', 'more', 'language',
    'small_talk', 'insufficient', 'refused', 'offers', 'queued', 'failed', 'answered',
)


@contextmanager
def _foreign_keys_off():
    """SQLite: copying a table that others reference (batch mode drops the original) needs
    foreign keys off, and the pragma is ignored inside a transaction, so the migration's
    transaction is committed around it (SQLite's own procedure for changing a table: foreign
    keys off, copy, `PRAGMA foreign_key_check`, foreign keys on). A no-op elsewhere."""
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


def _in(column, values):
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _sign(kinds):
    credits = [k for k in kinds if k in ('grant', 'purchase', 'bonus', 'refund', 'reversal')]
    return (f"({_in('kind', credits)} AND amount > 0)"
            f" OR ({_in('kind', ('debit', 'clawback', 'expiry'))} AND amount < 0)"
            " OR kind = 'adjustment'")


def _rename_states(old, new):
    op.rename_table(old, new)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f'ALTER TABLE {new} RENAME CONSTRAINT pk_{old} TO pk_{new}')
        op.execute(f'ALTER TABLE {new} RENAME CONSTRAINT fk_{old}_account_id_accounts'
                   f' TO fk_{new}_account_id_accounts')
        return
    # SQLite cannot rename a constraint: the table is copied with the new names.
    with op.batch_alter_table(new, schema=None, recreate='always') as batch_op:
        batch_op.drop_constraint(batch_op.f(f'fk_{old}_account_id_accounts'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f(f'pk_{old}'), type_='primary')
        batch_op.create_primary_key(batch_op.f(f'pk_{new}'), ['account_id'])
        batch_op.create_foreign_key(batch_op.f(f'fk_{new}_account_id_accounts'), 'accounts',
                                    ['account_id'], ['id'])


def _rekind(old_kind, new_kind, old_kinds, new_kinds):
    """Entries of `old_kind` become `new_kind`, keys `<old_kind>:...` -> `<new_kind>:...`."""
    dialect = op.get_bind().dialect.name
    for statement in APPEND_ONLY[dialect]['drop']:
        op.execute(statement)
    both = tuple(dict.fromkeys(old_kinds + new_kinds))
    # First a CHECK that allows both names, so that the rows can move from one to the other.
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_ledger_entries_kind_known'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_ledger_entries_sign_matches_kind'),
                                 type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_ledger_entries_kind_known'),
                                         _in('kind', both))
        batch_op.create_check_constraint(batch_op.f('ck_ledger_entries_sign_matches_kind'),
                                         _sign(both))
    prefix = f'{old_kind}:'
    start = len(prefix) + 1
    op.execute(sa.text(
        "UPDATE ledger_entries SET kind = :new_kind,"
        " idempotency_key = CASE WHEN substr(idempotency_key, 1, :n) = :prefix"
        "   THEN :new_prefix || substr(idempotency_key, :start) ELSE idempotency_key END,"
        " operation_key = CASE WHEN substr(operation_key, 1, :n) = :prefix"
        "   THEN :new_prefix || substr(operation_key, :start) ELSE operation_key END"
        " WHERE kind = :old_kind"
    ).bindparams(new_kind=new_kind, old_kind=old_kind, prefix=prefix, n=len(prefix),
                 new_prefix=f'{new_kind}:', start=start))
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_ledger_entries_kind_known'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_ledger_entries_sign_matches_kind'),
                                 type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_ledger_entries_kind_known'),
                                         _in('kind', new_kinds))
        batch_op.create_check_constraint(batch_op.f('ck_ledger_entries_sign_matches_kind'),
                                         _sign(new_kinds))
    # (SQLite's batch mode copies the table, which drops its triggers anyway.)
    for statement in APPEND_ONLY[dialect]['create']:
        op.execute(statement)


def upgrade():
    with _foreign_keys_off():
        _rename_states('tier_states', 'level_states')
        _rekind('refund', 'reversal', OLD_KINDS, NEW_KINDS)
        with op.batch_alter_table('messages', schema=None) as batch_op:
            batch_op.create_check_constraint(
                batch_op.f('ck_messages_outcome_known'),
                f"outcome IS NULL OR {_in('outcome', OUTCOME_KINDS)}")


def downgrade():
    with _foreign_keys_off():
        with op.batch_alter_table('messages', schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f('ck_messages_outcome_known'), type_='check')
        _rekind('reversal', 'refund', NEW_KINDS, OLD_KINDS)
        _rename_states('level_states', 'tier_states')
