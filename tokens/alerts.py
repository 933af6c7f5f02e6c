"""What a debit that lowers the balance past the threshold starts (issue #16, points 2 and 3):
an auto top-up for a person who turned it on, else a low-balance alert.

The threshold is the catalog's (`Catalog.auto_topup_threshold`: `auto_topup.threshold_tokens`,
default the price of the dearest intent). A *crossing* is a debit that takes the available
balance from at or above the threshold to under it, or from above 0 to 0. Then:

- auto top-up on (`tokens.auto_topup`): the crossing re-arms it and `auto_topup.due` records
  the attempt (an open checkout of ours, keyed `auto_topup:<account>:<n>`); the caller
  charges it after the commit. While the balance stays under the threshold, each later
  debit asks `due` again, which gives back an attempt left open by a transient error (same
  key: never charged twice).
- otherwise: a low-balance alert, at most one a UTC day (`LevelState.alert_day`) and from the
  person's daily budget of free replies (`levels.take_free_reply`).

Nothing is read for a debit that leaves the balance at or above the threshold (the common
case): the caller passes the balance it knows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from tokens import auto_topup, levels
from tokens.catalog import Catalog
from tokens.errors import CatalogError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AfterDebit:
    """What a debit started.

    Attributes:
        alert: "low" (under the threshold) or "empty" (at 0): send a low-balance alert with
            the BUY link; None: none.
        available: the available balance after the debit, tokens.
        top_up: an auto top-up to charge after the commit (`auto_topup.charge`), or None.
    """

    alert: str | None = None
    available: int = 0
    top_up: auto_topup.TopUpDue | None = None


def after_debit(session: Session, account_id: int, catalog: Catalog, *, before: int,
                after: int, now: datetime, provider_name: str | None) -> AfterDebit:
    """Check a debit that took the available balance from `before` to `after` tokens.

    The caller holds the account's lock and commits; `provider_name` is the payment provider
    auto top-ups go through (None: no provider, no auto top-up).

    Returns:
        `AfterDebit` (nothing when the balance is still at or above the threshold).
    """
    threshold = catalog.auto_topup_threshold()
    if after >= threshold:
        return AfterDebit(available=after)
    crossed = before >= threshold or (before > 0 and after == 0)
    if provider_name is not None:
        state = auto_topup.status(session, account_id, now)
        if state.state == "on":
            try:
                due = auto_topup.due(session, account_id, after, threshold, now,
                                     catalog.auto_topup.max_per_month, catalog=catalog,
                                     provider_name=provider_name, before_tokens=before)
            except CatalogError as exc:  # the pack left the catalog: the answer still stands
                log.error("auto top-up skipped", extra={"error": str(exc)})
                due = None
            if due is not None:
                return AfterDebit(available=after, top_up=due)
    if not crossed:
        return AfterDebit(available=after)
    state_row = levels.state_of(session, account_id)
    today = f"{now:%Y-%m-%d}"
    if state_row.alert_day == today:
        return AfterDebit(available=after)
    if not levels.take_free_reply(session, account_id, catalog, now):
        return AfterDebit(available=after)
    state_row.alert_day = today
    return AfterDebit(alert="empty" if after == 0 else "low", available=after)
