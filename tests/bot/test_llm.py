"""LLM answers: the request sent (within the tier's caps), usage for costs, errors, the answer
cache, and the LLM skill's offline fallback. The real `openai` library talks to a local
stand-in of the Chat Completions API; no database is needed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bot import llm, replies
from bot.errors import SkillFailed
from bot.intents import SkillRequest, skill_for
from bot.intents.llm import LlmSkill
from bot.llm import (
    CachedChat,
    ChatReply,
    ChatRequest,
    LlmError,
    MemoryCache,
    OpenAIChat,
    RedisCache,
    build_request,
    combine_usage,
)
from testing.openai_standin import (
    DEFAULT_REPLY_PREFIX,
    estimate_tokens,
    prompt_tokens,
)
from tokens.catalog import load_catalog
from tokens.costs import LlmUsage
from tokens.errors import CatalogError

CATALOG = load_catalog()
SETTINGS = CATALOG.llm
NORMAL = SETTINGS.tier("normal")
REDUCED = SETTINGS.tier("reduced")
MEAL_PLAN = CATALOG.intent("meal_plan")
MEAL_TEXT = "meal plan 1800 calories vegetarian"


def request_for(text: str = MEAL_TEXT, history: tuple[tuple[str, str], ...] = (),
                tier=NORMAL, channel: str = "sms") -> ChatRequest:
    return build_request(SETTINGS, tier, MEAL_PLAN, text, history, channel)


# --- the request --------------------------------------------------------------------------------


def test_the_request_sent_carries_the_tier_model_caps_and_prompts(standin, chat):
    history = (("user", "I am vegetarian"), ("assistant", "Noted: no meat or fish."))
    reply = chat.complete(request_for(history=history))
    (body,) = standin.bodies
    assert body["model"] == "gpt-4o-mini"
    assert body["max_tokens"] == 400
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith(f"{SETTINGS.system_prompt} {MEAL_PLAN.prompt}")
    assert system.startswith("You are NutriBot, a nutrition assistant")
    assert "Keep the answer under 300 characters." in system  # an SMS answer stays short
    assert [m["content"] for m in messages[1:]] == [
        "I am vegetarian", "Noted: no meat or fish.", MEAL_TEXT,
    ]
    assert standin.requests[0]["headers"]["authorization"] == "Bearer sk-test"
    assert reply.text == DEFAULT_REPLY_PREFIX + MEAL_TEXT
    assert reply.cached is False


def test_the_reduced_tier_asks_a_cheaper_model_for_a_shorter_answer(standin, chat):
    chat.complete(request_for(tier=REDUCED, channel="whatsapp"))
    (body,) = standin.bodies
    assert (body["model"], body["max_tokens"]) == ("gpt-4.1-nano", 150)
    assert "Keep the answer under 1500 characters." in body["messages"][0]["content"]


def test_the_newest_history_is_kept_within_the_input_cap():
    """2000 characters for context and message: a 500-character message leaves 1500, so the
    two newest 600-character turns are sent and the three older ones dropped."""
    history = tuple(
        ("user" if i % 2 == 0 else "assistant", f"{i}" * 600) for i in range(5)
    )
    request = request_for("m" * 500, history)
    assert request.messages[0][0] == "system"
    assert request.messages[1:] == (("assistant", "3" * 600), ("user", "4" * 600),
                                    ("user", "m" * 500))
    sent = sum(len(content) for _, content in request.messages[1:])
    assert sent <= NORMAL.max_input_chars
    assert (request.model, request.max_tokens) == ("gpt-4o-mini", 400)


def test_a_long_turn_stops_the_history_even_if_older_ones_would_fit():
    """Context is the newest contiguous turns: an old short turn is never sent without the
    turns after it (2 + 6 + 1995 > 2000)."""
    history = (("user", "old and short"), ("assistant", "x" * 1995), ("user", "recent"))
    request = request_for("hi", history)
    assert request.messages[1:] == (("user", "recent"), ("user", "hi"))


def test_a_message_longer_than_the_cap_is_cut_and_leaves_no_room_for_context():
    text = "".join(chr(ord("a") + i % 26) for i in range(3000))
    request = request_for(text, (("user", "earlier"),))
    assert request.messages[1:] == (("user", text[:2000]),)
    reduced = request_for(text, tier=REDUCED)
    assert reduced.messages[-1] == ("user", text[:800])


def test_the_system_prompt_is_not_counted_against_the_input_cap():
    request = request_for("x" * 2000)
    assert len(request.messages[0][1]) > 300
    assert request.messages[-1] == ("user", "x" * 2000)


def test_an_intent_without_a_prompt_gets_the_catalog_system_prompt_alone():
    from dataclasses import replace

    bare = replace(MEAL_PLAN, prompt="")
    system = build_request(SETTINGS, NORMAL, bare, "hi").messages[0][1]
    assert system == f"{SETTINGS.system_prompt} Keep the answer under 300 characters."


# --- usage --------------------------------------------------------------------------------------


def test_usage_is_mapped_to_llm_usage_with_the_request_model(standin, chat):
    standin.reply = "Breakfast: oats. Lunch: lentil soup. Dinner: tofu stir fry."
    reply = chat.complete(request_for())
    (body,) = standin.bodies
    assert reply.usage == LlmUsage(
        "gpt-4o-mini", prompt_tokens(body["messages"]), estimate_tokens(standin.reply),
    )
    assert reply.text == standin.reply


def test_usage_names_the_requested_model_not_a_dated_snapshot(standin, chat, monkeypatch):
    """OpenAI answers with e.g. "gpt-4o-mini-2024-07-18"; the price table knows the request's
    name, so that is the one recorded."""
    create = chat.client.chat.completions.create

    def dated(*args: Any, **kwargs: Any) -> Any:
        response = create(*args, **kwargs)
        response.model = "gpt-4o-mini-2024-07-18"
        return response

    monkeypatch.setattr(chat.client.chat.completions, "create", dated)
    reply = chat.complete(request_for())
    assert reply.usage is not None and reply.usage.model == "gpt-4o-mini"
    assert CATALOG.costs.model(reply.usage.model)  # priced


def test_a_long_answer_is_cut_at_max_tokens(standin, chat):
    standin.reply = "word " * 1000
    reply = chat.complete(request_for(tier=REDUCED))
    assert reply.usage is not None and reply.usage.completion_tokens == 150
    assert len(reply.text) <= 150 * 4


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (500, None, "HTTP 500"),
        (503, None, "HTTP 503"),
        (429, None, "HTTP 429"),
        (429, "insufficient_quota", "HTTP 429"),
        (401, None, "HTTP 401"),
        (400, None, "HTTP 400"),
    ],
)
def test_an_http_error_is_an_llm_error_without_the_prompt(standin, chat, status, code, reason):
    standin.fail_next(status, code=code)
    with pytest.raises(LlmError) as error:
        chat.complete(request_for("my secret diary entry"))
    assert str(error.value) == reason
    assert error.value.usage is None
    assert "secret" not in str(error.value)
    assert len(standin.bodies) == 1  # no library retries by default


def test_a_slow_api_is_a_timeout(openai_api):
    # A stand-in of its own (stopped after the test), so the request it is still sleeping on
    # cannot reach the shared one's next test.
    openai_api.delay_seconds = 5.0
    chat = OpenAIChat("sk-test", base_url=openai_api.base_url, timeout_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(LlmError, match="^timeout$") as error:
        chat.complete(request_for())
    assert time.monotonic() - started < 3.0
    assert error.value.usage is None


def test_an_unreachable_api_is_a_connection_error():
    chat = OpenAIChat("sk-test", base_url="http://127.0.0.1:1/v1", timeout_seconds=2.0)
    with pytest.raises(LlmError, match="^connection failed$"):
        chat.complete(request_for())


@pytest.mark.parametrize("content", ["", "   \n  "])
def test_an_empty_answer_is_an_llm_error_that_still_reports_usage(standin, chat, content):
    """An empty answer is no answer, but it was billed: its usage travels with the error."""
    standin.reply = content
    with pytest.raises(LlmError, match="empty answer") as error:
        chat.complete(request_for())
    (body,) = standin.bodies
    assert error.value.usage == LlmUsage(
        "gpt-4o-mini", prompt_tokens(body["messages"]), estimate_tokens(content),
    )


def test_library_retries_are_used_when_asked(standin):
    standin.fail_next(503, times=2, retry_after=0.01)
    chat = OpenAIChat("sk-test", base_url=standin.base_url, timeout_seconds=5.0, max_retries=2)
    reply = chat.complete(request_for())
    assert reply.text.startswith(DEFAULT_REPLY_PREFIX)
    assert len(standin.bodies) == 3


# --- the answer cache ---------------------------------------------------------------------------


def test_the_cache_key_covers_everything_that_shapes_the_answer():
    base = request_for()
    assert base.cache_key() == request_for().cache_key()
    assert len(base.cache_key()) == 64 and int(base.cache_key(), 16) >= 0
    others = [
        request_for(history=(("user", "hello"),)),
        request_for(MEAL_TEXT + "!"),
        request_for(tier=REDUCED),
        request_for(channel="whatsapp"),
        ChatRequest("gpt-4.1-mini", base.messages, base.max_tokens),
        ChatRequest(base.model, base.messages, base.max_tokens - 1),
        ChatRequest(base.model, (("system", base.messages[0][1]), ("assistant", MEAL_TEXT)),
                    base.max_tokens),
    ]
    keys = {base.cache_key(), *(other.cache_key() for other in others)}
    assert len(keys) == len(others) + 1


def test_an_identical_request_is_answered_from_the_cache(standin, chat):
    cached = CachedChat(chat, MemoryCache(), ttl_seconds=60)
    first = cached.complete(request_for())
    second = cached.complete(request_for())
    assert len(standin.requests) == 1  # no second call
    assert (first.cached, second.cached) == (False, True)
    assert first.usage is not None and second.usage is None  # a cached answer costs nothing
    assert second.text == first.text


def test_a_different_history_is_a_different_request(standin, chat):
    cached = CachedChat(chat, MemoryCache(), ttl_seconds=60)
    cached.complete(request_for(history=(("user", "I am vegan"),)))
    other = cached.complete(request_for(history=(("user", "I eat fish"),)))
    assert other.cached is False and other.usage is not None
    assert len(standin.requests) == 2
    assert cached.complete(request_for(history=(("user", "I am vegan"),))).cached is True
    assert len(standin.requests) == 2


def test_a_failed_call_is_not_cached(standin, chat):
    cached = CachedChat(chat, MemoryCache(), ttl_seconds=60)
    standin.fail_next(500)
    with pytest.raises(LlmError, match="HTTP 500"):
        cached.complete(request_for())
    standin.reply = ""
    with pytest.raises(LlmError, match="empty answer"):
        cached.complete(request_for())
    standin.reply = None
    answer = cached.complete(request_for())
    assert answer.cached is False and answer.text
    assert len(standin.requests) == 3


class BrokenCache:
    """A cache whose server is down."""

    def __init__(self, broken_get: bool = True, broken_put: bool = True) -> None:
        self.broken_get, self.broken_put = broken_get, broken_put
        self.items: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        if self.broken_get:
            raise ConnectionError("cache down")
        return self.items.get(key)

    def put(self, key: str, text: str, ttl_seconds: int) -> None:
        if self.broken_put:
            raise ConnectionError("cache down")
        self.items[key] = text


@pytest.mark.parametrize(("broken_get", "broken_put"), [(True, True), (True, False),
                                                        (False, True)])
def test_a_failing_cache_is_skipped_not_fatal(standin, chat, broken_get, broken_put):
    cached = CachedChat(chat, BrokenCache(broken_get, broken_put), ttl_seconds=60)
    first = cached.complete(request_for())
    second = cached.complete(request_for())
    assert first.text == second.text and first.usage is not None
    assert second.cached is False and second.usage is not None  # asked again, and paid for
    assert len(standin.requests) == 2


def test_the_cache_ttl_is_the_catalogs_and_passed_to_the_store(standin, chat):
    store = BrokenCache(broken_get=False, broken_put=False)
    seen: list[int] = []
    put = store.put

    def spy(key: str, text: str, ttl_seconds: int) -> None:
        seen.append(ttl_seconds)
        put(key, text, ttl_seconds)

    store.put = spy  # type: ignore[method-assign]
    CachedChat(chat, store, SETTINGS.cache_ttl_seconds).complete(request_for())
    assert seen == [86_400]
    assert list(store.items) == [request_for().cache_key()]


def test_memory_cache_entries_expire_after_their_ttl(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(llm.time, "monotonic", lambda: clock[0])
    cache = MemoryCache()
    cache.put("k", "answer", ttl_seconds=60)
    clock[0] += 59.9
    assert cache.get("k") == "answer"
    clock[0] += 0.1  # exactly at the expiry: gone
    assert cache.get("k") is None
    cache.put("k", "again", ttl_seconds=60)  # a new put starts a new ttl
    clock[0] += 30
    assert cache.get("k") == "again"


def test_memory_cache_ttl_with_the_real_clock():
    cache = MemoryCache()
    cache.put("k", "answer", ttl_seconds=0)
    cache.put("long", "kept", ttl_seconds=60)
    time.sleep(0.01)
    assert cache.get("k") is None and cache.get("long") == "kept"


def test_memory_cache_drops_the_least_recently_used_beyond_its_bound():
    cache = MemoryCache(max_items=2)
    cache.put("a", "A", 60)
    cache.put("b", "B", 60)
    assert cache.get("a") == "A"  # "a" is now the most recently used
    cache.put("c", "C", 60)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    cache.put("a", "A2", 60)  # rewriting refreshes too
    cache.put("d", "D", 60)
    assert (cache.get("a"), cache.get("c"), cache.get("d")) == ("A2", None, "D")


def test_redis_cache_uses_a_prefix_and_the_ttl():
    class FakeRedis:
        def __init__(self) -> None:
            self.data: dict[str, tuple[bytes, int]] = {}

        def get(self, key: str) -> bytes | None:
            item = self.data.get(key)
            return item[0] if item else None

        def set(self, key: str, value: bytes, ex: int) -> None:
            self.data[key] = (value, ex)

    connection = FakeRedis()
    cache = RedisCache(connection)
    cache.put("abc", "Très bien", 600)
    assert connection.data == {"bot:llm-answer:abc": ("Très bien".encode(), 600)}
    assert cache.get("abc") == "Très bien"
    assert cache.get("nope") is None


# --- the LLM skill ------------------------------------------------------------------------------


def skill(chat: Any, fallback: Any = "offline") -> LlmSkill:
    return LlmSkill(MEAL_PLAN, SETTINGS, chat,
                    skill_for("meal_plan") if fallback == "offline" else fallback)


def skill_request(**changes: Any) -> SkillRequest:
    values: dict[str, Any] = {"intent": "meal_plan", "text": MEAL_TEXT, "channel": "sms"}
    values.update(changes)
    return SkillRequest(**values)


def test_the_skill_answers_with_the_llm_then_from_the_cache(standin, chat):
    answering = skill(CachedChat(chat, MemoryCache(), 60))
    first = answering.answer(skill_request(history=(("user", "hi"), ("assistant", "Hello!"))))
    assert (first.source, first.text) == ("llm", DEFAULT_REPLY_PREFIX + MEAL_TEXT)
    assert first.usage is not None and first.usage.model == "gpt-4o-mini"
    body = standin.bodies[0]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    again = answering.answer(skill_request(history=(("user", "hi"), ("assistant", "Hello!"))))
    assert (again.source, again.usage, again.text) == ("cache", None, first.text)
    assert len(standin.requests) == 1


def test_the_skill_uses_the_request_tier(standin, chat):
    skill(chat).answer(skill_request(tier="reduced"))
    assert (standin.bodies[0]["model"], standin.bodies[0]["max_tokens"]) == ("gpt-4.1-nano", 150)
    with pytest.raises(CatalogError, match="blocked"):
        skill(chat).answer(skill_request(tier="blocked"))


@pytest.mark.parametrize("status", [500, 429])
def test_on_an_llm_error_the_skill_fails_with_the_offline_answer_marked_free(
    standin, chat, status
):
    standin.fail_next(status)
    with pytest.raises(SkillFailed) as error:
        skill(chat).answer(skill_request())
    offline = skill_for("meal_plan").answer(skill_request()).text
    assert "1800 kcal" in offline  # the offline meal plan for this message
    # the offline answer and the "nothing was charged" note, and nothing else
    assert error.value.reply in (f"{offline}\n{replies.OFFLINE_FREE}",
                                 f"{replies.OFFLINE_FREE}\n{offline}")
    assert error.value.usage is None
    assert f"HTTP {status}" in str(error.value)


def test_on_a_timeout_the_skill_falls_back_too(openai_api):
    openai_api.delay_seconds = 5.0
    slow = OpenAIChat("sk-test", base_url=openai_api.base_url, timeout_seconds=0.3)
    with pytest.raises(SkillFailed) as error:
        skill(slow).answer(skill_request())
    assert error.value.reply is not None and replies.OFFLINE_FREE in error.value.reply
    assert "timeout" in str(error.value)


def test_an_empty_llm_answer_fails_the_skill_and_keeps_its_usage_for_costs(standin, chat):
    standin.reply = ""
    with pytest.raises(SkillFailed) as error:
        skill(chat).answer(skill_request())
    assert error.value.usage is not None
    assert error.value.usage.model == "gpt-4o-mini"
    assert error.value.usage.prompt_tokens == prompt_tokens(standin.bodies[0]["messages"])
    assert replies.OFFLINE_FREE in (error.value.reply or "")


def test_without_an_offline_skill_the_fallback_is_the_apology(standin, chat):
    standin.fail_next(500)
    with pytest.raises(SkillFailed) as error:
        skill(chat, fallback=None).answer(skill_request())
    assert error.value.reply == replies.SKILL_FAILED


def test_an_offline_skill_that_fails_too_gives_its_own_reply():
    class Refusing:
        intent = "meal_plan"

        def answer(self, request: SkillRequest) -> Any:
            raise SkillFailed("no", reply="I do not know that food.")

    class Down:
        def complete(self, request: ChatRequest) -> ChatReply:
            raise LlmError("HTTP 502")

    with pytest.raises(SkillFailed) as error:
        skill(Down(), fallback=Refusing()).answer(skill_request())
    assert error.value.reply == "I do not know that food."


# --- usage of several calls ---------------------------------------------------------------------


def test_combine_usage_sums_the_calls_of_one_model():
    first, second = LlmUsage("gpt-4o-mini", 100, 40), LlmUsage("gpt-4o-mini", 130, 35)
    assert combine_usage(first, second) == LlmUsage("gpt-4o-mini", 230, 75)
    assert combine_usage(first, None) == first
    assert combine_usage(None, None) is None
    assert combine_usage() is None
    with pytest.raises(ValueError, match="different models"):
        combine_usage(first, LlmUsage("gpt-4.1-nano", 1, 1))
    price = CATALOG.costs.model("gpt-4o-mini")
    summed = price.cost_musd(230, 75)
    # The sum costs what the calls cost, rounded up once (at most 1 µUSD less than twice).
    assert price.cost_musd(100, 40) + price.cost_musd(130, 35) - summed in (0, 1)


# --- the constraints -----------------------------------------------------------------------------


def test_build_request_puts_the_constraints_after_the_intent_prompt():
    system = build_request(SETTINGS, NORMAL, MEAL_PLAN, "hi", constraints="No eggs.") \
        .messages[0][1]
    assert system == (f"{SETTINGS.system_prompt} {MEAL_PLAN.prompt} No eggs. "
                      "Keep the answer under 300 characters.")
    # Without constraints the prompt is as before (and so is the cache key).
    assert build_request(SETTINGS, NORMAL, MEAL_PLAN, "hi").messages[0][1] == (
        f"{SETTINGS.system_prompt} {MEAL_PLAN.prompt} Keep the answer under 300 characters.")


def test_the_skill_sends_the_constraints_clause(standin, chat):
    skill(chat).answer(skill_request(
        text="vegetarian meal plan for 3 days 1800 calories for 2 people, allergic to peanuts"))
    system = standin.bodies[0]["messages"][0]["content"]
    assert "Diet: vegetarian (no meat, fish, shellfish or cheese made with animal rennet)." \
        in system
    assert "No peanuts or anything made from peanuts: peanut, peanut butter, groundnut, " \
        "satay, nut butter." in system
    assert "Calories: about 1800 kcal a day. Days: 3. People: 2. Answer in English." in system


def test_a_goal_sets_the_plan_target_in_the_prompt(standin, chat):
    skill(chat).answer(skill_request(text="meal plan to lose weight"))
    system = standin.bodies[0]["messages"][0]["content"]
    assert "Calories: about 1500 kcal a day. Goal: lose weight." in system


@pytest.mark.parametrize(("text", "language"), [
    ("plan de comidas vegano", None), ("vegan meal plan", "es"),
])
def test_a_spanish_request_is_answered_in_spanish(standin, chat, text, language):
    skill(chat).answer(skill_request(text=text, language=language))
    system = standin.bodies[0]["messages"][0]["content"]
    assert "Answer in Spanish." in system and "Diet: vegan" in system


@pytest.mark.parametrize("text", [
    "800 calorie meal plan", "low FODMAP meal plan", "zorblax-free meal plan",
    "plan de comidas para diabéticos",
])
def test_what_the_offline_skill_refuses_is_refused_free_without_a_call(standin, chat, text):
    with pytest.raises(SkillFailed) as error:
        skill(chat).answer(skill_request(text=text))
    with pytest.raises(SkillFailed) as offline:
        skill_for("meal_plan").answer(skill_request(text=text))
    assert error.value.reply == offline.value.reply
    assert error.value.usage is None
    assert standin.requests == []


def test_a_violating_answer_is_asked_again_with_the_violation_named(standin, chat):
    standin.script("Breakfast: 2 eggs on toast.", "Breakfast: oats with banana, no eggs.")
    answer = skill(chat).answer(skill_request(text="meal plan without eggs"))
    assert answer.text == "Breakfast: oats with banana, no eggs."
    first, second = standin.bodies
    assert 'Your previous answer included "eggs"' not in first["messages"][0]["content"]
    assert ('Your previous answer included "eggs", which the person asked to leave out.'
            in second["messages"][0]["content"])
    assert answer.usage == LlmUsage(
        "gpt-4o-mini",
        prompt_tokens(first["messages"]) + prompt_tokens(second["messages"]),
        estimate_tokens("Breakfast: 2 eggs on toast.")
        + estimate_tokens("Breakfast: oats with banana, no eggs."))


def test_two_violations_are_refused_free_with_both_calls_costed(standin, chat):
    standin.reply = "Dinner: grilled salmon."
    with pytest.raises(SkillFailed) as error:
        skill(chat).answer(skill_request(text="vegetarian meal plan", channel="whatsapp"))
    assert error.value.reply == (
        "Sorry, I couldn't write an answer that surely leaves out fish, so I won't send one. "
        "Please ask again, maybe in other words. Nothing was charged.")
    first, second = standin.bodies
    assert "which a vegetarian diet rules out" in second["messages"][0]["content"]
    assert error.value.usage == LlmUsage(
        "gpt-4o-mini", prompt_tokens(first["messages"]) + prompt_tokens(second["messages"]),
        2 * estimate_tokens("Dinner: grilled salmon."))
    assert "twice" in str(error.value)


def test_the_refusal_is_in_the_person_s_language(standin, chat):
    standin.reply = "Cena: salmón a la plancha."
    with pytest.raises(SkillFailed) as error:
        skill(chat).answer(skill_request(text="plan de comidas vegetariano"))
    assert error.value.reply == (
        "Lo siento, no consegui una respuesta que deje fuera pescado con seguridad, asi que no "
        "te la envio. Vuelve a preguntar, quiza con otras palabras. No se cobro nada.")  # SMS


def test_an_llm_error_on_the_retry_falls_back_and_keeps_the_first_usage(standin, chat):
    class FailingRetry:
        """The real client; the API fails once the first answer is in."""

        def complete(self, request: ChatRequest) -> ChatReply:
            reply = chat.complete(request)
            standin.fail_next(503)
            return reply

    standin.reply = "Breakfast: 2 eggs."
    with pytest.raises(SkillFailed) as error:
        skill(FailingRetry()).answer(skill_request(text="meal plan without eggs"))
    assert len(standin.bodies) == 2 and "HTTP 503" in str(error.value)
    assert replies.OFFLINE_FREE in (error.value.reply or "")
    assert error.value.usage is not None
    assert error.value.usage.completion_tokens == estimate_tokens("Breakfast: 2 eggs.")


def test_the_constraints_stay_within_the_bound_the_cost_ceiling_allows():
    from bot.intents.constraints import parse_constraints
    from bot.intents.llm import MAX_CLAUSE_CHARS, MAX_CORRECTION_CHARS, constraints_clause
    from bot.knowledge import load_knowledge

    assert MAX_CLAUSE_CHARS + 1 + MAX_CORRECTION_CHARS <= llm.MAX_CONSTRAINTS_CHARS
    text = ("vegan kosher meal plan for 3 days, 1800 calories for 4 people, no nuts, no eggs, "
            "no sesame, no soy, no gluten, no mustard, no celery, no garlic, no onion, "
            "no citrus, no coconut, no fish, no shellfish, sin maní")
    knowledge = load_knowledge()
    clause = constraints_clause(parse_constraints(text, knowledge), knowledge)
    assert len(clause) <= MAX_CLAUSE_CHARS
    assert "No nuts, eggs, sesame" in clause  # names alone when the lists do not fit
    assert clause.endswith("Days: 3. People: 4. Answer in English.")
    with pytest.raises(ValueError, match="exceed"):
        build_request(SETTINGS, NORMAL, MEAL_PLAN, "hi",
                      constraints="x" * (llm.MAX_CONSTRAINTS_CHARS + 1))
