"""Rate limits on the simulated clock: a `limits` storage whose counters expire in simulated
time (`SimulatedClockStorage`)."""

from __future__ import annotations

import heapq

from limits.storage import Storage


class SimulatedClockStorage(Storage):
    """A `limits` storage in memory whose counters expire on the simulated clock.

    `bot.ratelimit.SenderLimits` keys its fixed windows by the router's `now`, but a storage
    expires its keys in real time; the in-memory one also scans every live key after each
    increment (a 10 ms timer), so a month replayed in an hour keeps every key of the last
    real hour alive and the scans come to dominate the replay. Here a counter lives `expiry`
    seconds of simulated time from its first increment, as it would in production. The
    simulation sets `now` (Unix seconds) before each message.
    """

    STORAGE_SCHEME = None

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._counts: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._queue: list[tuple[float, str]] = []

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        """Nothing here raises storage errors."""
        return ValueError

    def _expire(self) -> None:
        while self._queue and self._queue[0][0] <= self.now:
            at, key = heapq.heappop(self._queue)
            if self._expires.get(key) == at:
                del self._expires[key]
                self._counts.pop(key, None)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add `amount` to the counter `key` (created to live `expiry` seconds); its value."""
        self._expire()
        if key not in self._counts:
            self._counts[key] = 0
            self._expires[key] = self.now + expiry
            heapq.heappush(self._queue, (self.now + expiry, key))
        self._counts[key] += amount
        return self._counts[key]

    def get(self, key: str) -> int:
        """The counter's value (0 when absent or expired)."""
        self._expire()
        return self._counts.get(key, 0)

    def get_expiry(self, key: str) -> float:
        """When the counter expires (Unix seconds of the simulated clock)."""
        return self._expires.get(key, self.now)

    def check(self) -> bool:
        """Always healthy."""
        return True

    def reset(self) -> int | None:
        """Forget every counter; how many there were."""
        count = len(self._counts)
        self._counts.clear()
        self._expires.clear()
        self._queue.clear()
        return count

    def clear(self, key: str) -> None:
        """Forget one counter."""
        self._counts.pop(key, None)
        self._expires.pop(key, None)

