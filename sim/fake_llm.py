"""The simulated LLM: a `ChatClient` with realistic usage and no network (`SimulatedChat`),
and the answer cache it sits behind (`SimulatedCache`), both per person.

Everything random here is drawn from the current person's own stream, and the cache is
partitioned by person, so that a person's month does not depend on who else is simulated in
the same process (`sim.shard` splits people across processes and merges exactly). In
production the answer cache is shared by everyone, so a real month has a few more cache hits
(cheaper); the simulation's LLM cost errs on the high side.
"""

from __future__ import annotations

import random
import re

from bot.llm import CachedChat, ChatClient, ChatReply, ChatRequest, LlmError
from tokens.costs import LlmUsage

# A simulated LLM answer is made of this text (GSM-7 only, as an SMS answer would be), with
# nothing the answer check flags for the constraints people state (vegetarian, gluten free...).
ANSWER_FILLER = (
    "Try a bowl of lentils with roasted vegetables and herbs, a salad of beans, tomato and "
    "cucumber, and a stew of chickpeas and spinach. Snack on fresh fruit. Drink water through "
    "the day and keep portions moderate. "
)
_LIMIT = re.compile(r"Keep the answer under (\d+) characters")


class SimulatedChat:
    """A `ChatClient` that answers at once, without a network, with a realistic `usage`.

    Prompt tokens: the request's characters / 4 plus 4 per message (English averages about 4
    characters a token), always under the level policy's ceiling. Completion tokens: 40 % to
    120 % of the length the system prompt asks for (characters / 4), at most `max_tokens`.
    The answer text is that many tokens x 4 characters of GSM-7 text. A share `failure_rate`
    of calls time out with no usage (the router then records the call at its ceiling).

    The random draws come from `rng`, which the replay sets to the current person's stream
    before each message (deterministic per person and seed).
    """

    def __init__(self, seed: int, failure_rate: float = 0.0) -> None:
        self.rng = random.Random(f"{seed}:llm")
        self.failure_rate = failure_rate
        self.calls = 0
        self.failures = 0

    def complete(self, request: ChatRequest) -> ChatReply:
        """Answer `request`; raises `LlmError("timeout")` for the simulated failures."""
        self.calls += 1
        rng = self.rng
        if self.failure_rate and rng.random() < self.failure_rate:
            self.failures += 1
            raise LlmError("timeout")
        prompt_tokens = (sum(len(content) for _, content in request.messages) // 4
                         + 4 * len(request.messages))
        system = request.messages[0][1] if request.messages else ""
        match = _LIMIT.search(system)
        wanted = int(match.group(1)) // 4 if match else 75
        completion = max(8, min(request.max_tokens, int(wanted * rng.uniform(0.4, 1.2))))
        chars = completion * 4
        text = (ANSWER_FILLER * (chars // len(ANSWER_FILLER) + 1))[:chars].rsplit(" ", 1)[0]
        return ChatReply(text.strip() + ".", LlmUsage(request.model, prompt_tokens, completion))


class SimulatedCache:
    """An `AnswerCache` partitioned by person, whose entries expire on the simulated clock.

    The replay sets `person` (an index) and `now` (Unix seconds, simulated) before each
    message. Expired entries are dropped whenever more than `PURGE_AT` are kept (dropping
    them changes no answer: an expired entry is a miss either way).
    """

    PURGE_AT = 50_000

    def __init__(self) -> None:
        self.person = 0
        self.now = 0.0
        self._items: dict[tuple[int, str], tuple[float, str]] = {}

    def get(self, key: str) -> str | None:
        """The person's cached text under `key`, or None (absent or expired)."""
        item = self._items.get((self.person, key))
        if item is None or item[0] <= self.now:
            return None
        return item[1]

    def put(self, key: str, text: str, ttl_seconds: int) -> None:
        """Keep `text` for the current person for `ttl_seconds` of simulated time."""
        if len(self._items) >= self.PURGE_AT:
            now = self.now
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
        self._items[(self.person, key)] = (self.now + ttl_seconds, text)


def unwrap(chat: ChatClient | None) -> SimulatedChat | None:
    """The `SimulatedChat` inside `chat` (behind a `CachedChat`), or None."""
    if isinstance(chat, CachedChat):
        chat = chat.client
    return chat if isinstance(chat, SimulatedChat) else None
