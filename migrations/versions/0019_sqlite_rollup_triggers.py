"""rollups: on SQLite, cost and revenue entries add themselves to their rollups (triggers)

A recording (`tokens.costs._record`) inserts its entries once per idempotency key and adds
the ones inserted to the day's, the month's and the intent's rollup rows. On PostgreSQL that
is one statement (data-modifying CTEs). SQLite has none, so it was the entries' INSERT plus
one upsert per rollup table: 3 or 4 statements per recording, about 6 of the 26 statements
of a simulated message. Here each inserted entry adds itself in an AFTER INSERT trigger, in
the INSERT's own statement and transaction; a key recorded before inserts no row, so its
trigger does not fire and nothing is added twice.

What an entry adds (the same as `tokens.costs`'s recording functions):
- every cost entry: `amount_musd` to the day's `cost_musd`; a revenue entry to its
  `revenue_musd` (the day of `created_at`, UTC, which SQLite stores as naive UTC text);
- `llm`: `cost_llm_musd`, one call, its prompt and completion tokens (none for an
  estimate); with an intent, `amount_musd` to the intent's `cost_llm_musd`;
- `messaging`: `cost_messaging_musd`, one message and `units` units in its direction;
- `platform`: `cost_platform_musd`;
- a revenue entry of kind K: `revenue_<K>_musd`.

PostgreSQL is unchanged (no triggers: its recording statement does this itself). A later
SQLite migration that rebuilds `cost_entries` or `revenue_entries` with `batch_alter_table`
must create these triggers again.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05 15:00:00

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def _when(condition, value):
    return f'CASE WHEN {condition} THEN {value} ELSE 0 END'


def _add(table, keys, values):
    """An upsert adding `values` (column -> SQL expression of NEW) to `table`'s row."""
    columns = list(keys) + list(values)
    exprs = list(keys.values()) + list(values.values())
    sets = ', '.join(f'{name} = {name} + excluded.{name}' for name in values)
    return (f'INSERT INTO {table} ({", ".join(columns)}) VALUES ({", ".join(exprs)}) '
            f'ON CONFLICT ({", ".join(keys)}) DO UPDATE SET {sets};')


DAY = 'substr(NEW.created_at, 1, 10)'
MONTH_KEYS = {'account_id': 'NEW.account_id', 'month': 'NEW.month'}
LLM, MESSAGING = "NEW.kind = 'llm'", "NEW.kind = 'messaging'"
IN, OUT = f"{MESSAGING} AND NEW.direction = 'in'", f"{MESSAGING} AND NEW.direction = 'out'"

COST_ROLLUPS = ' '.join([
    _add('account_days', {'account_id': 'NEW.account_id', 'day': DAY},
         {'cost_musd': 'NEW.amount_musd', 'revenue_musd': '0'}),
    _add('account_months', MONTH_KEYS, {
        'cost_llm_musd': _when(LLM, 'NEW.amount_musd'),
        'cost_messaging_musd': _when(MESSAGING, 'NEW.amount_musd'),
        'cost_platform_musd': _when("NEW.kind = 'platform'", 'NEW.amount_musd'),
        'messages_in': _when(IN, '1'),
        'messages_out': _when(OUT, '1'),
        'units_in': _when(IN, 'coalesce(NEW.units, 0)'),
        'units_out': _when(OUT, 'coalesce(NEW.units, 0)'),
        'llm_calls': _when(LLM, '1'),
        'llm_prompt_tokens': _when(LLM, 'coalesce(NEW.prompt_tokens, 0)'),
        'llm_completion_tokens': _when(LLM, 'coalesce(NEW.completion_tokens, 0)'),
    }),
    # INSERT ... SELECT ... WHERE: an upsert only for an entry with an intent.
    'INSERT INTO account_month_intents (account_id, month, intent, answers, tokens_charged, '
    'cost_llm_musd) SELECT NEW.account_id, NEW.month, NEW.intent, 0, 0, NEW.amount_musd '
    'WHERE NEW.intent IS NOT NULL ON CONFLICT (account_id, month, intent) '
    'DO UPDATE SET cost_llm_musd = cost_llm_musd + excluded.cost_llm_musd;',
])

REVENUE_ROLLUPS = ' '.join([
    _add('account_days', {'account_id': 'NEW.account_id', 'day': DAY},
         {'cost_musd': '0', 'revenue_musd': 'NEW.amount_musd'}),
    _add('account_months', MONTH_KEYS, {
        f'revenue_{kind}_musd': _when(f"NEW.kind = '{kind}'", 'NEW.amount_musd')
        for kind in ('pack', 'subscription', 'affiliate')}),
])

TRIGGERS = {
    'cost_entries_rollups': ('cost_entries', COST_ROLLUPS),
    'revenue_entries_rollups': ('revenue_entries', REVENUE_ROLLUPS),
}


def upgrade():
    if op.get_bind().dialect.name != 'sqlite':
        return
    for name, (table, body) in TRIGGERS.items():
        op.execute(f'CREATE TRIGGER {name} AFTER INSERT ON {table} BEGIN {body} END')


def downgrade():
    if op.get_bind().dialect.name != 'sqlite':
        return
    for name in TRIGGERS:
        op.execute(f'DROP TRIGGER {name}')
