"""One person's turn: at most one worker answers a person at a time, and no message waits
forgotten (docs/pipeline.md, "Per-person order").

Every inbound message gets its own RQ job. The job knocks on its person's turn: in one Redis
script it adds its MessageSid to the person's waiting set and takes the turn if nobody holds
it. A job that gets the turn answers the person's inbox oldest first; a job that does not
just ends, because the holder will see its MessageSid. The holder gives the turn back with a
second script that refuses while the waiting set is non-empty, so a knock that lands while
the holder works makes it go round once more. Both steps are single Redis scripts, so no
knock can fall between "the holder looked" and "the holder left".

This holds across any number of workers on any number of hosts sharing the one Redis: the
turn is a Redis key, and the order is the inbox's insertion order in the one database. A
worker that dies holding a turn loses it when the key expires (`TURN_TTL_SECONDS`, refreshed
before each message); `flask --app wsgi messages sweep` re-enqueues what it left waiting.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, cast

import redis

# How long a turn outlives its last refresh (seconds): above the job timeout, so only a dead
# worker's turn lapses; it is refreshed before each message.
TURN_TTL_SECONDS = 240
# A refresh within this many seconds of the last one (or of taking the turn) is skipped: the
# turn cannot lapse that soon (it lives `TURN_TTL_SECONDS`), and it saves a Redis round trip
# before each message of a quick drain.
REFRESH_EVERY_SECONDS = 10

# Knocking takes the turn when it is free and, in the same script, the waiting set (the
# holder's first `take_waiting` needs no round trip of its own); else it returns 0.
_KNOCK = """
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3]) then
  local sids = redis.call('SMEMBERS', KEYS[2])
  redis.call('DEL', KEYS[2])
  return sids
end
return 0
"""
_TAKE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local sids = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return sids
"""
_LEAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[3] == '0' and redis.call('SCARD', KEYS[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
for i = 4, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
if #ARGV >= 4 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
redis.call('DEL', KEYS[1])
return 1
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class TurnLost(RuntimeError):
    """The turn expired while held (the worker stalled past `TURN_TTL_SECONDS`); the job
    fails and RQ retries it, and the inbox row it was on is still there."""


def turn_key(sender: str) -> str:
    """The Redis key of a person's turn: a hash of the sender, so no number sits in Redis."""
    digest = hashlib.sha256(sender.encode()).hexdigest()[:32]
    return f"bot:turn:{digest}"


class PersonTurn:
    """One job's handle on a person's turn.

    Args:
        connection: the Redis client.
        sender: the person (`InboundMessage.sender`).
        ttl_seconds: how long the turn outlives its last refresh.
        refresh_every_seconds: `refresh` sends nothing this soon after the last one (below
            `ttl_seconds`).
    """

    def __init__(self, connection: redis.Redis, sender: str,
                 ttl_seconds: int = TURN_TTL_SECONDS,
                 refresh_every_seconds: float = REFRESH_EVERY_SECONDS) -> None:
        self._redis = connection
        self._keys = [turn_key(sender), turn_key(sender) + ":waiting"]
        self._token = secrets.token_hex(16)
        self._ttl_ms = str(ttl_seconds * 1000)
        self._taken: list[str] | None = None  # the waiting set read by a successful knock
        self._refreshed = 0.0  # time.monotonic() of the last taking or refresh
        self._refresh_every = min(refresh_every_seconds, ttl_seconds / 2)

    def knock(self, message_sid: str) -> bool:
        """Note `message_sid` as waiting and take the turn if it is free; True: taken (the
        caller answers), False: someone holds it and will answer `message_sid` too."""
        sids = self._run(_KNOCK, self._token, message_sid, self._ttl_ms)
        if sids == 0:
            return False
        self._taken = _sids(sids)
        self._refreshed = time.monotonic()
        return True

    def take_waiting(self) -> list[str]:
        """The MessageSids that knocked since the last call (cleared), refreshing the turn.
        The first call after a successful knock returns what the knock read, with no round
        trip; a knock that landed since stays waiting, and `leave` sends the holder round
        for it.

        Raises:
            TurnLost: the turn is no longer ours.
        """
        if self._taken is not None:
            taken, self._taken = self._taken, None
            return taken
        sids = self._run(_TAKE, self._token, self._ttl_ms)
        if sids == -1:
            raise TurnLost("the person's turn expired while held")
        self._refreshed = time.monotonic()
        return _sids(sids)

    def refresh(self) -> bool:
        """Push the turn's expiry back; False when it is no longer ours. Within
        `REFRESH_EVERY_SECONDS` of the last refresh it is still ours and nothing is sent."""
        now = time.monotonic()
        if now - self._refreshed < self._refresh_every:
            return True
        if not self._run(_REFRESH, self._token, self._ttl_ms):
            return False
        self._refreshed = now
        return True

    def leave(self) -> bool:
        """Give the turn back unless someone knocked meanwhile; True: given back, False: go
        round again (call `take_waiting`).

        Raises:
            TurnLost: the turn is no longer ours.
        """
        done = self._run(_LEAVE, self._token, self._ttl_ms, "0")
        if done == -1:
            raise TurnLost("the person's turn expired while held")
        return bool(done)

    def give_up(self, waiting: list[str]) -> None:
        """Give the turn back now, putting `waiting` back in the waiting set (a failing or
        out-of-time job: the next job of this person sees them), with what a knock read and
        `take_waiting` has not handed out yet. Never raises for a turn already lost."""
        untaken, self._taken = self._taken or [], None
        self._run(_LEAVE, self._token, self._ttl_ms, "1", *waiting, *untaken)

    def _run(self, script: str, *args: str) -> Any:
        return self._redis.eval(script, 2, *self._keys, *args)


def _sids(reply: Any) -> list[str]:
    """MessageSids from a script's reply (a list of bytes or str)."""
    return [s.decode() if isinstance(s, bytes) else str(s) for s in cast(list[Any], reply)]
