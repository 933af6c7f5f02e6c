"""The simulator's pieces without a database: schedules, abusive patterns, the per-person
LLM and cache, presets, the targets and the exact merge's arithmetic."""

from __future__ import annotations

import random
from decimal import Decimal

import click
import pytest

from bot.llm import ChatRequest
from sim.fake_llm import SimulatedCache, SimulatedChat
from sim.personas import COMMANDS, PERSONAS, TEXTS_ES, parse_mix, with_propensities
from sim.population import DAY, make_person, person_kinds, schedule, waking_second
from sim.presets import PRESETS
from sim.report import PersonResult, levels_by_day, targets
from tokens.catalog import load_catalog


def test_a_person_s_stream_depends_on_the_seed_and_their_number_only() -> None:
    persona = PERSONAS["power"]
    one, again = make_person(7, persona, 1), make_person(7, persona, 1)
    assert schedule(persona, one.rng, 30, 30) == schedule(persona, again.rng, 30, 30)
    other = make_person(8, persona, 1)
    assert schedule(persona, other.rng, 30, 30) != schedule(persona, make_person(
        7, persona, 1).rng, 30, 30)
    kinds = person_kinds(100, parse_mix("casual=0.5,power=0.5"), 3)
    assert kinds == person_kinds(100, parse_mix("casual=0.5,power=0.5"), 3)
    assert kinds.count("casual") == kinds.count("power") == 50


def test_abusive_patterns() -> None:
    rng = random.Random(1)
    toggles = [text for _, text in schedule(PERSONAS["toggler"], rng, 30, 30)
               if text in (COMMANDS["stop"], COMMANDS["start"])]
    assert toggles and toggles[0] == "STOP" and toggles.count("START") > 0
    helps = [text for _, text in schedule(PERSONAS["flooder"], rng, 30, 30)]
    assert helps.count("HELP") >= 50
    probe = schedule(PERSONAS["prober"], random.Random(2), 30, 30)
    gaps = [b - a for (a, _), (b, _) in zip(probe, probe[1:], strict=False) if 0 < b - a <= 8]
    assert len(gaps) > 20 and min(gaps) >= 6
    assert all(0 <= moment < 30 * DAY for moment, _ in probe)


def test_message_time_patterns() -> None:
    rng = random.Random(4)
    night = [waking_second(rng, "night") // 3600 for _ in range(2000)]
    day = [waking_second(rng, "daytime") // 3600 for _ in range(2000)]
    assert sum(h < 6 for h in night) > 1000 and sum(h < 7 for h in day) < 250


def test_spanish_people_write_spanish() -> None:
    persona = with_propensities(PERSONAS, "spanish", "1")["casual"]
    person = make_person(0, persona, 1)
    assert person.language == "es"
    texts = [t for _, t in schedule(persona, person.rng, 30, 30, person.language)
             if t not in COMMANDS.values()]
    spanish = {t for group in TEXTS_ES.values() for t in group}
    assert texts and set(texts) <= spanish


def test_propensities_and_presets() -> None:
    personas = with_propensities(PERSONAS, "refund", "0.5")
    assert personas["casual"].refund == 0.5 and personas["abusive"].refund == 0.0
    assert with_propensities(PERSONAS, "click", "power=1")["power"].click == 1.0
    with pytest.raises(click.BadParameter):
        with_propensities(PERSONAS, "buy", "2")
    for preset in PRESETS.values():
        mix = parse_mix(preset.mix)
        assert sum(mix.values()) == Decimal(1)
        for name, value in preset.propensities.items():
            with_propensities(PERSONAS, name, value)


def test_the_simulated_llm_and_cache_are_per_person() -> None:
    chat = SimulatedChat(1)
    request = ChatRequest(model="gpt-4o-mini", messages=(
        ("system", "Keep the answer under 300 characters."), ("user", "meal plan")),
        max_tokens=400)
    chat.rng = random.Random("a")
    first = chat.complete(request)
    chat.rng = random.Random("a")
    assert chat.complete(request) == first
    assert first.usage is not None and first.usage.completion_tokens <= 400
    for word in ("fish", "yogurt", "oats", "chicken", "egg", "nuts", "rice"):
        assert word not in first.text
    cache = SimulatedCache()
    cache.person, cache.now = 1, 100.0
    cache.put("k", "text", 60)
    assert cache.get("k") == "text"
    cache.person = 2
    assert cache.get("k") is None
    cache.person, cache.now = 1, 160.0
    assert cache.get("k") is None
    cache.PURGE_AT = 2
    cache.put("a", "x", 60)
    cache.put("b", "y", 60)
    assert cache.get("a") == "x" and cache.get("b") == "y" and len(cache._items) == 2


def result(persona: str, revenue: int, cost: int, loss: int = 0) -> PersonResult:
    return PersonResult(account_id=1, persona=persona, level="NORMAL", messages_in=1,
                        cost_musd=cost, revenue_musd=revenue, inbound_musd=0, platform_musd=0,
                        carrier_replies_musd=0, loss_musd=loss, raw_loss_musd=cost - revenue,
                        ceiling_musd=6_000_000, bought=revenue > 0, revenue_pack_musd=revenue)


def test_targets() -> None:
    table = targets([result("casual", 0, 20_000, 20_000), result("power", 5_000_000, 400_000),
                     result("power", 0, 0)])
    everyone = table["all"]
    assert everyone["people"] == 3 and everyone["profitable"] == "66.67 %"
    assert everyone["at_3_usd"] == "33.33 %" and everyone["cost_per_person_musd"] == 140_000
    assert everyone["margin"] == "91.60 %" and everyone["free_people"] == "66.67 %"
    assert everyone["free_profitable"] == "50.00 %" and everyone["within_bound"] == "100.00 %"
    assert table["casual"]["profitable"] == "0.00 %" and table["casual"]["margin"] == "n/a"
    assert list(table) == ["all", "casual", "power"]


def test_levels_by_day() -> None:
    catalog = load_catalog()
    daily = {0: {"2026-11-01": (0, 100_000), "2026-11-02": (0, 200_000)},
             1: {"2026-11-02": (5_000_000, 0)}}
    levels = levels_by_day(daily, "2026-11", catalog)
    assert levels["2026-11-01"]["NORMAL"] == 1 and sum(levels["2026-11-01"].values()) == 1
    assert levels["2026-11-02"]["REDUCED"] == 1 and levels["2026-11-02"]["NORMAL"] == 1
    assert levels["2026-11-30"] == levels["2026-11-02"]


def test_default_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """One shard per `PEOPLE_PER_SHARD` people, rounded up to a multiple of the cores, never
    more shards than people."""
    from sim import shard

    monkeypatch.setattr(shard.os, "cpu_count", lambda: 2)
    per = shard.PEOPLE_PER_SHARD
    assert [shard.default_shards(n) for n in (1, 2, 40, per, 2 * per, 2 * per + 1)] == [
        1, 2, 2, 2, 2, 4]
    assert shard.default_shards(10_000) == 18  # 17 of 600 rounded up to a multiple of 2
    monkeypatch.setattr(shard.os, "cpu_count", lambda: 3)
    assert shard.default_shards(10_000) == 18
    assert shard.default_shards(3 * per + 1) == 6
    monkeypatch.setattr(shard.os, "cpu_count", lambda: None)
    assert shard.default_shards(5) == 1
