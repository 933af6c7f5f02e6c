"""LLM access: chat completions through the official `openai` library, with an answer cache.

Every call carries an explicit timeout, `max_tokens` and an input cap from the catalog's LLM
tier settings (docs/economy.md, "Cost and revenue": the actual cost of an answer is bounded
by its ceiling). The cost is computed by the caller from `usage` and the catalog's price table.

An identical request (same model, `max_tokens`, system prompt, context and message) is answered
from the cache, with no call and no LLM cost; the cache lives in Redis when it is configured,
else in the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import openai

from bot.errors import BotError
from bot.waits import waiting_on
from tokens.catalog import IntentSpec, LlmSettings, LlmTier
from tokens.costs import LlmUsage

log = logging.getLogger(__name__)

# Characters an SMS answer should stay within: two GSM-7 segments of 153 (docs/messaging.md).
SMS_ANSWER_CHARS = 300
WHATSAPP_ANSWER_CHARS = 1500
# The most characters `build_request` adds to the system prompt for the person's constraints
# (a clause, and on a retry the violation named): `bot.intents.llm.MAX_CLAUSE_CHARS` +
# `MAX_CORRECTION_CHARS`. An answer's cost ceiling must allow for it.
MAX_CONSTRAINTS_CHARS = 1000


class LlmError(BotError):
    """An LLM call gave no usable answer (timeout, connection, HTTP error, empty answer).

    Attributes:
        usage: what the call used, when the API reported it (an empty answer still costs).
    """

    def __init__(self, reason: str, usage: LlmUsage | None = None) -> None:
        super().__init__(reason)
        self.usage = usage


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for.

    Attributes:
        model: the model name, e.g. "gpt-4o-mini".
        messages: (role, content) pairs: the system prompt, then context, then the message.
        max_tokens: cap on completion tokens.
    """

    model: str
    messages: tuple[tuple[str, str], ...]
    max_tokens: int

    def cache_key(self) -> str:
        """A digest of everything that shapes the answer (hex SHA-256)."""
        raw = json.dumps([self.model, self.max_tokens, self.messages], ensure_ascii=False)
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChatReply:
    """An answer: its text, and the API's usage (None when it came from the cache)."""

    text: str
    usage: LlmUsage | None
    cached: bool = False


class ChatClient(Protocol):
    """Something that answers a `ChatRequest` (the OpenAI API, or a cache in front of it)."""

    def complete(self, request: ChatRequest) -> ChatReply:
        """Answer `request`. Raises `LlmError` when no usable answer comes back."""
        ...


class OpenAIChat:
    """Chat completions through `openai.OpenAI` (any OpenAI-compatible API via `base_url`).

    Args:
        api_key: `OPENAI_API_KEY`.
        base_url: `OPENAI_BASE_URL`, or None for OpenAI's.
        timeout_seconds: the HTTP timeout, seconds. The client applies it to each phase
            (connect, write, and each wait for a chunk of the answer), so a call can take
            somewhat longer; each retry gets it again.
        max_retries: the library's own retries (connection errors, 408, 409, 429, 5xx); 0 for
            answers given inside a webhook.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        timeout_seconds: float = 10.0,
        max_retries: int = 0,
    ) -> None:
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url,
                                    timeout=timeout_seconds, max_retries=max_retries)

    def complete(self, request: ChatRequest) -> ChatReply:
        """Ask the API. Raises `LlmError` (with the reason, never the prompt) on any failure."""
        messages: list[Any] = [{"role": role, "content": content}
                               for role, content in request.messages]
        try:
            with waiting_on("llm"):
                response = self.client.chat.completions.create(
                    model=request.model, messages=messages, max_tokens=request.max_tokens
                )
        except openai.APITimeoutError:
            raise LlmError("timeout") from None
        except openai.APIStatusError as exc:
            raise LlmError(f"HTTP {exc.status_code}") from None
        except openai.APIConnectionError:
            raise LlmError("connection failed") from None
        except openai.OpenAIError as exc:
            raise LlmError(f"{type(exc).__name__}") from None
        usage = None
        if response.usage is not None:
            # The request's model names the price: the response may name a dated snapshot.
            usage = LlmUsage(request.model, response.usage.prompt_tokens,
                             response.usage.completion_tokens)
        text = (response.choices[0].message.content or "").strip() if response.choices else ""
        if not text:
            raise LlmError("empty answer", usage)
        return ChatReply(text, usage)


def combine_usage(*usages: LlmUsage | None) -> LlmUsage | None:
    """The usage of several calls to one model as one `LlmUsage` (tokens summed), so a skill
    that asked twice (an answer, then a retry) reports both calls for COGS.

    Prices are linear in tokens, so the sum costs what the calls cost (`ModelPrice.cost_musd`
    rounds the sum up once, not each call: at most 1 µUSD less per extra call).

    Args:
        usages: the calls' usages; None for a call that reported none (a cached answer, a
            timeout), which adds nothing.

    Returns:
        The summed usage, or None when no call reported any.

    Raises:
        ValueError: the usages name different models (their tokens have different prices,
            so one sum cannot be priced).
    """
    reported = [u for u in usages if u is not None]
    if not reported:
        return None
    models = {u.model for u in reported}
    if len(models) > 1:
        raise ValueError(f"cannot sum the usage of different models: {sorted(models)}")
    return LlmUsage(reported[0].model, sum(u.prompt_tokens for u in reported),
                    sum(u.completion_tokens for u in reported))


class AnswerCache(Protocol):
    """A key -> answer text store with a time to live."""

    def get(self, key: str) -> str | None:
        """The cached text, or None."""
        ...

    def put(self, key: str, text: str, ttl_seconds: int) -> None:
        """Keep `text` under `key` for `ttl_seconds`."""
        ...


class MemoryCache:
    """An in-process LRU cache (the embedded default), bounded to `max_items` answers."""

    def __init__(self, max_items: int = 1024) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            expires, text = item
            if expires <= time.monotonic():
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return text

    def put(self, key: str, text: str, ttl_seconds: int) -> None:
        with self._lock:
            self._items[key] = (time.monotonic() + ttl_seconds, text)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)


class RedisCache:
    """Answers kept in Redis (shared by every web process and worker), under `prefix`."""

    def __init__(self, connection: Any, prefix: str = "bot:llm-answer:") -> None:
        self.connection = connection
        self.prefix = prefix

    def get(self, key: str) -> str | None:
        value = self.connection.get(self.prefix + key)
        if value is None:
            return None
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def put(self, key: str, text: str, ttl_seconds: int) -> None:
        self.connection.set(self.prefix + key, text.encode("utf-8"), ex=ttl_seconds)


class CachedChat:
    """A `ChatClient` that answers identical requests from `cache` (no call, no LLM cost).

    A cache that fails (Redis down) is skipped, not fatal: the call is made.
    """

    def __init__(self, client: ChatClient, cache: AnswerCache, ttl_seconds: int) -> None:
        self.client = client
        self.cache = cache
        self.ttl_seconds = ttl_seconds

    def complete(self, request: ChatRequest) -> ChatReply:
        key = request.cache_key()
        try:
            hit = self.cache.get(key)
        except Exception as exc:  # the cache is an optimisation; never lose an answer to it
            log.warning("answer cache read failed", extra={"error": type(exc).__name__})
            hit = None
        if hit is not None:
            return ChatReply(hit, usage=None, cached=True)
        reply = self.client.complete(request)
        try:
            self.cache.put(key, reply.text, self.ttl_seconds)
        except Exception as exc:
            log.warning("answer cache write failed", extra={"error": type(exc).__name__})
        return reply


def build_request(
    settings: LlmSettings,
    tier: LlmTier,
    spec: IntentSpec,
    text: str,
    history: Sequence[tuple[str, str]] = (),
    channel: str = "sms",
    constraints: str = "",
) -> ChatRequest:
    """The chat request for one message, within the LLM tier's caps.

    Args:
        settings: the catalog's LLM settings (system prompt).
        tier: model, `max_tokens` and the input cap (characters of context and message).
        spec: the intent; its `prompt` follows the system prompt.
        text: the person's message; cut to the input cap if longer.
        history: earlier (role, text) turns, oldest first, roles "user" or "assistant"; the
            newest that fit within what the cap leaves are sent.
        channel: "sms" or "whatsapp", for the length the answer is asked to keep to.
        constraints: what the answer must honour, said plainly (diet, what to leave out,
            calories, days, people, the answer's language; `bot.intents.llm.constraints_clause`);
            it follows the intent's prompt. Like the system prompt, it is not counted against
            the input cap: it is ours, and at most `MAX_CONSTRAINTS_CHARS`.

    Returns:
        The `ChatRequest`.

    Raises:
        ValueError: `constraints` is longer than `MAX_CONSTRAINTS_CHARS` (the cost ceiling of
            an answer would not hold).
    """
    if len(constraints) > MAX_CONSTRAINTS_CHARS:
        raise ValueError(f"constraints of {len(constraints)} characters exceed "
                         f"{MAX_CONSTRAINTS_CHARS}")
    limit = SMS_ANSWER_CHARS if channel == "sms" else WHATSAPP_ANSWER_CHARS
    system = f"{settings.system_prompt} {spec.prompt}".strip()
    if constraints:
        system += f" {constraints.strip()}"
    system += f" Keep the answer under {limit} characters."
    budget = tier.max_input_chars
    message = text[:budget]
    budget -= len(message)
    context: list[tuple[str, str]] = []
    for role, content in reversed(history):
        if len(content) > budget:
            break
        context.append((role, content))
        budget -= len(content)
    context.reverse()
    messages = (("system", system), *context, ("user", message))
    return ChatRequest(model=tier.model, messages=messages, max_tokens=tier.max_tokens)
