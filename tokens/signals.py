"""What the ledger and the profit engine wrote, for observers such as `app.metrics` (blinker
signals, as Flask uses them).

The hot paths write with Core statements, which SQLAlchemy's ORM events never see, so the
modules that write say so here, once per row actually inserted (a repeated idempotency key
sends nothing). A signal is sent when the statement ran, inside the caller's transaction: a
rollback afterwards does not take it back, as with ORM flush events.

- `hold_placed`: a new hold. Keyword arguments: `tokens` (int).
- `entries_posted`: new ledger entries. Keyword arguments: `kinds` (list of entry kinds,
  one per entry: "grant", "debit", "expiry", ...).
- `costs_recorded`: new cost entries. Keyword arguments: `entries`, a list of
  (channel or None, kind, amount µUSD) per entry.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

hold_placed = _signals.signal("tokens.hold-placed")
entries_posted = _signals.signal("tokens.entries-posted")
costs_recorded = _signals.signal("tokens.costs-recorded")
