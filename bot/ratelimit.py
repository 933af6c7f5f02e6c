"""Per-sender rate limits (docs/messaging.md, "Per-person order and limits"): by default 10
messages a minute and 100 an hour per person; a throttled message gets no skill, no charge and
at most one short notice an hour; STOP and HELP are never throttled (the router checks them
first).

Counters live in a `limits` storage: Redis when `REDIS_URL` is set (shared by every web process
and worker), else in-process memory. The windows are fixed and keyed by the caller's clock (the
router's `now`), so the simulator's simulated time and the tests' frozen time count correctly:
window start = floor(now / window length); the counter expires with its window.

If the storage fails (Redis down), the message is let through and the failure logged: a rate
limit is abuse control, and the loss ceiling (tokens.levels) still bounds what anyone can cost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from redis import RedisError

log = logging.getLogger(__name__)
DEFAULT_LIMITS = "10 per minute;100 per hour"
# A stalled Redis must not hold the webhook (and the account's row lock) for long.
REDIS_TIMEOUT_SECONDS = 1.0
NOTICE_EVERY_SECONDS = 3600  # at most one "slow down" notice per sender per clock hour
DAY_SECONDS = 86_400  # the inbound flood count's window: the UTC day


@dataclass(frozen=True)
class Verdict:
    """What the limits say about one message.

    Attributes:
        allowed: the message may be handled.
        notify: throttled, and no notice went to this sender this hour: send the one short
            notice (False: stay silent).
        limit: the limit that was exceeded, e.g. "10 per 1 minute" (None when allowed).
    """

    allowed: bool
    notify: bool = False
    limit: str | None = None


class SenderLimits:
    """Fixed-window counters per sender over a `limits` storage.

    Args:
        limits: e.g. `parse_many("10 per minute;100 per hour")`.
        storage: a `limits` storage (`storage_from_string("memory://")` or a Redis URL).

    Raises:
        ValueError: no limits.
    """

    def __init__(self, limits: Sequence[RateLimitItem], storage: Storage) -> None:
        if not limits:
            raise ValueError("at least one rate limit is needed")
        # Shortest window first, whatever order the setting lists them in: a message refused
        # by one limit is not counted against the longer ones, so the order decides how much
        # of the longer windows a flood uses up.
        self.limits = tuple(sorted(limits, key=lambda item: item.get_expiry()))
        self.storage = storage

    @classmethod
    def from_settings(cls, spec: str | None, storage_uri: str | None) -> SenderLimits:
        """Limits from a string like "10 per minute;100 per hour" (default `DEFAULT_LIMITS`)
        over Redis (`storage_uri` a redis:// URL) or memory (None).

        Raises:
            ValueError: the spec does not parse.
        """
        # max_connections: a worker's many threads check limits at once (app.worker).
        options = ({"socket_timeout": REDIS_TIMEOUT_SECONDS,
                    "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
                    "max_connections": 512}
                   if storage_uri and storage_uri.startswith(("redis://", "rediss://")) else {})
        storage = storage_from_string(storage_uri or "memory://", **options)
        if not isinstance(storage, Storage):  # an async storage URI ("async+redis://")
            raise ValueError(f"not a synchronous storage: {storage_uri!r}")
        return cls(parse_many(spec or DEFAULT_LIMITS), storage)

    def count_day(self, sender: str, now: datetime, kind: str = "inbound") -> int | None:
        """Count one `kind` of `sender` in its UTC day and return the day's count so far
        (this one included): "inbound" messages, for the flood threshold
        (`levels.inbound_flood_per_day`), or "classify" calls (`llm.classify_per_day`); None
        when the storage fails (logged)."""
        day = int(now.timestamp()) // DAY_SECONDS
        try:
            return int(self.storage.incr(f"sender-day:{kind}:{sender}:{day}", DAY_SECONDS))
        except (RedisError, OSError) as exc:
            log.error("rate limit storage failed; flood count skipped",
                      extra={"error": type(exc).__name__})
            return None

    def check(self, sender: str, now: datetime) -> Verdict:
        """Count one message of `sender` (an opaque key, e.g. "account:42") at `now` (UTC)
        against each limit, shortest window first, up to the first it goes past, which
        refuses it (a refused message does not use up the longer windows' allowance)."""
        try:
            for item in self.limits:
                window = item.get_expiry()
                start = int(now.timestamp()) // window
                key = f"sender-limit:{sender}:{item.amount}/{window}:{start}"
                if self.storage.incr(key, window) > item.amount:
                    hour = int(now.timestamp()) // NOTICE_EVERY_SECONDS
                    notices = self.storage.incr(f"sender-limit-notice:{sender}:{hour}",
                                                NOTICE_EVERY_SECONDS)
                    return Verdict(False, notify=notices == 1, limit=str(item))
        except (RedisError, OSError) as exc:
            log.error("rate limit storage failed; message let through",
                      extra={"error": type(exc).__name__})
        return Verdict(True)
