"""ledger: on PostgreSQL, `capture` and `debit` in one round trip each (PL/pgSQL functions)

A capture was six statements (five when the hold was placed in the same transaction): the
hold with its account's row locked, the lots it may draw on, the hold's conditional UPDATE,
the account's balance and held, the entries and the lots; a debit (an offline answer's
charge) four. Each is a round trip, and on the benchmark's 2 cores the client's share of a
statement (SQLAlchemy and the driver) costs more CPU than the server's. `ledger_capture` and
`ledger_debit` do the same steps, in the same order and under the same lock, inside the
server (`ledger_draw_plan` and `ledger_post_draw` are their shared draw): the account's row
lock first, then the lots read afresh under it (a VOLATILE function takes a new snapshot for
each statement, so the read sees what the lock's previous holder committed), then the
writes, each guarded as in `tokens.ledger`.

The capture's UPDATE of the hold says "still pending" as `(status = 'pending') IS TRUE`,
which no index serves, for the reason given at `tokens.ledger._STILL_PENDING` (the planner
would otherwise walk `ix_ledger_holds_status`).

A function writes only when every check passes; otherwise it returns no row and leaves the
tables as they were, and `tokens.ledger` takes its own statements to say why (a replay, a
hold no longer pending or past its expiry, a key used by another operation, an amount out of
range, too few tokens, lots or holds due to expire first, lots that do not cover it). The
constraints (CHECKs, the entries' unique keys) are the tables' own and apply to them as to
any statement. SQLite keeps the statements of `tokens.ledger`.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 16:40:00

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


# p_order: the buckets in consumption order (tokens.ledger.CONSUMPTION_ORDER), given by the
# caller so that the rule has one source. The rows come back with each entry's key, so that
# the caller can put them in the draw's order.
CREATE = r"""
CREATE OR REPLACE FUNCTION ledger_draw_plan(
    p_account integer, p_tokens bigint, p_valid_at timestamptz, p_key text, p_order text[],
    OUT lots integer[], OUT buckets text[], OUT takes bigint[], OUT keys text[],
    OUT covered boolean)
LANGUAGE plpgsql VOLATILE AS $fn$
-- tokens.ledger._draw_plan and _entry_keys: the lots valid at p_valid_at in consumption
-- order, what to take from each, and the entries' keys (p_key, p_key#2, ...).
DECLARE
    v_left bigint := p_tokens;
    v_n bigint;
    r record;
BEGIN
    lots := '{}'; buckets := '{}'; takes := '{}'; keys := '{}';
    FOR r IN
        SELECT l.id, l.bucket::text AS bucket, l.remaining
          FROM ledger_lots l
         WHERE l.account_id = p_account AND l.remaining > 0
           AND (l.expires_at IS NULL OR l.expires_at > p_valid_at)
         ORDER BY array_position(p_order, l.bucket::text), l.expires_at ASC NULLS LAST, l.id
    LOOP
        v_n := least(v_left, r.remaining);
        keys := keys || CASE WHEN cardinality(keys) = 0 THEN p_key
                             ELSE p_key || '#' || (cardinality(keys) + 1)::text END;
        lots := lots || r.id;
        buckets := buckets || r.bucket;
        takes := takes || v_n;
        v_left := v_left - v_n;
        EXIT WHEN v_left = 0;
    END LOOP;
    covered := v_left = 0;
END
$fn$;

CREATE OR REPLACE FUNCTION ledger_post_draw(
    p_account integer, p_kind text, p_key text, p_hold_id integer, p_memo text,
    p_now timestamptz, p_lots integer[], p_buckets text[], p_takes bigint[], p_keys text[])
RETURNS TABLE (o_entry_id integer, o_key text, o_lot_id integer, o_bucket text,
               o_taken bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
-- tokens.ledger._post_draw: lower the lots, post one entry per lot.
BEGIN
    UPDATE ledger_lots l SET remaining = l.remaining - t.n
      FROM unnest(p_lots, p_takes) AS t (id, n)
     WHERE l.id = t.id;
    RETURN QUERY
    INSERT INTO ledger_entries (account_id, kind, bucket, amount, idempotency_key,
                                operation_key, lot_id, hold_id, memo, actor, created_at)
    SELECT p_account, p_kind, t.b, -t.n, t.k, p_key, t.lot, p_hold_id, p_memo, NULL, p_now
      FROM unnest(p_lots, p_buckets, p_takes, p_keys) AS t (lot, b, n, k)
    RETURNING id, idempotency_key::text, lot_id, bucket::text, -amount;
END
$fn$;

CREATE OR REPLACE FUNCTION ledger_capture(
    p_hold_id integer, p_take bigint, p_key text, p_now timestamptz, p_order text[])
RETURNS TABLE (o_entry_id integer, o_key text, o_lot_id integer, o_bucket text,
               o_taken bigint, o_hold_amount bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
-- tokens.ledger.capture, the common case.
DECLARE
    v_account integer;
    v_amount bigint;
    v_status text;
    v_created timestamptz;
    v_expires timestamptz;
    v_memo text;
    v_take bigint;
    d record;
BEGIN
    SELECT h.account_id, h.amount, h.status, h.created_at, h.expires_at, h.memo
      INTO v_account, v_amount, v_status, v_created, v_expires, v_memo
      FROM ledger_holds h JOIN accounts a ON a.id = h.account_id
     WHERE h.id = p_hold_id
       FOR NO KEY UPDATE OF a;
    IF NOT FOUND OR v_status <> 'pending' OR v_expires <= p_now THEN
        RETURN;
    END IF;
    v_take := coalesce(p_take, v_amount);
    IF v_take < 1 OR v_take > v_amount THEN
        RETURN;
    END IF;
    d := ledger_draw_plan(v_account, v_take, v_created, p_key, p_order);
    IF NOT d.covered THEN
        RETURN;
    END IF;
    -- The entries' keys are looked up one by one: an equality on the unique index is planned
    -- as an index scan however stale the table's statistics, an `= ANY (array)` not always.
    FOR i IN 2 .. cardinality(d.keys) LOOP
        IF EXISTS (SELECT 1 FROM ledger_entries e WHERE e.idempotency_key = d.keys[i]) THEN
            RETURN;
        END IF;
    END LOOP;
    UPDATE ledger_holds
       SET status = 'captured', captured = v_take, settled_at = p_now
     WHERE id = p_hold_id AND (status = 'pending') IS TRUE AND expires_at > p_now
       AND NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.idempotency_key = p_key);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE accounts SET held = held - v_amount, balance = balance - v_take
     WHERE id = v_account;
    RETURN QUERY
    SELECT p.*, v_amount
      FROM ledger_post_draw(v_account, 'debit', p_key, p_hold_id, v_memo, p_now,
                            d.lots, d.buckets, d.takes, d.keys) AS p;
END
$fn$;

CREATE OR REPLACE FUNCTION ledger_debit(
    p_account integer, p_tokens bigint, p_key text, p_memo text, p_now timestamptz,
    p_order text[])
RETURNS TABLE (o_entry_id integer, o_key text, o_lot_id integer, o_bucket text,
               o_taken bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
-- tokens.ledger.debit, the common case: its conditional UPDATE (tokens.ledger._DEBIT_IF_SETTLED)
-- locks the row and checks the balance, the key and that no lot is due, then the draw.
DECLARE
    d record;
BEGIN
    UPDATE accounts SET balance = balance - p_tokens
     WHERE id = p_account AND balance - held >= p_tokens
       AND NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.idempotency_key = p_key)
       AND NOT EXISTS (SELECT 1 FROM ledger_lots l
                        WHERE l.account_id = p_account AND l.remaining > 0
                          AND l.expires_at <= p_now);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    d := ledger_draw_plan(p_account, p_tokens, p_now, p_key, p_order);
    IF NOT d.covered THEN
        -- The lots hold fewer tokens than the balance said: give the balance back, write
        -- nothing, and let the caller's statements find it (LedgerInvariantBroken).
        UPDATE accounts SET balance = balance + p_tokens WHERE id = p_account;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT * FROM ledger_post_draw(p_account, 'debit', p_key, NULL, p_memo, p_now,
                                   d.lots, d.buckets, d.takes, d.keys);
END
$fn$;
"""

FUNCTIONS = (
    'ledger_debit(integer, bigint, text, text, timestamptz, text[])',
    'ledger_capture(integer, bigint, text, timestamptz, text[])',
    'ledger_post_draw(integer, text, text, integer, text, timestamptz, integer[], text[],'
    ' bigint[], text[])',
    'ledger_draw_plan(integer, bigint, timestamptz, text, text[])',
)


def upgrade():
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(CREATE)


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        for function in FUNCTIONS:
            op.execute(f'DROP FUNCTION IF EXISTS {function}')
