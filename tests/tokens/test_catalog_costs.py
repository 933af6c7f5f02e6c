"""The catalog's cost table and LLM settings: defaults pinned to docs/economy.md ("Cost and
revenue"), exact µUSD arithmetic, and clear errors that name the field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokens.catalog import (
    DEFAULT_CATALOG_PATH,
    Costs,
    LlmSettings,
    ModelPrice,
    load_catalog,
)
from tokens.errors import CatalogError

DEFAULT_RAW: dict[str, Any] = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text(encoding="utf-8"))


def write_catalog(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None] | None = None, **changes: Any
) -> Path:
    """The shipped catalog with top-level `changes` and an optional in-place `edit` applied,
    written to `tmp_path/economy.yaml` (copied from tests/tokens/test_catalog.py)."""
    raw = copy.deepcopy(DEFAULT_RAW)
    raw.update(changes)
    if edit is not None:
        edit(raw)
    path = tmp_path / "economy.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


# --- defaults -------------------------------------------------------------------------------


def test_default_costs_match_economy_md():
    """Platform $0.0002; SMS $0.0079 a segment each way; WhatsApp $0.0050 + $0.0025 fee a
    message each way; all as whole µUSD."""
    costs = load_catalog().costs
    assert isinstance(costs, Costs)
    assert costs.platform_musd == 200
    sms, whatsapp = costs.messaging["sms"], costs.messaging["whatsapp"]
    assert (sms.unit, sms.inbound_musd, sms.outbound_musd) == ("segment", 7900, 7900)
    assert (whatsapp.unit, whatsapp.inbound_musd, whatsapp.outbound_musd) == (
        "message", 5000 + 2500, 5000 + 2500,
    )
    assert set(costs.messaging) == {"sms", "whatsapp"}
    for amount in (costs.platform_musd, sms.inbound_musd, whatsapp.outbound_musd):
        assert type(amount) is int


def test_default_model_prices_are_exact_decimals():
    mini = load_catalog().costs.model("gpt-4o-mini")
    assert mini == ModelPrice("gpt-4o-mini", Decimal("0.15"), Decimal("0.60"))
    assert isinstance(mini.input_usd_per_million, Decimal)


def test_default_llm_tiers_and_sms_cap():
    catalog = load_catalog()
    normal = catalog.llm.tier("normal")
    assert catalog.llm.tier() is normal  # the default tier is "normal"
    assert (normal.model, normal.max_tokens, normal.max_input_chars) == ("gpt-4o-mini", 400, 2000)
    reduced = catalog.llm.tier("reduced")
    assert (reduced.model, reduced.max_tokens, reduced.max_input_chars) == (
        "gpt-4.1-nano", 150, 800,
    )
    assert catalog.sms_max_segments == 2
    # every tier's model has a price, so every call's cost can be recorded
    for tier in catalog.llm.tiers.values():
        assert catalog.costs.model(tier.model).model == tier.model


def test_system_prompt_names_the_bot_and_intents_carry_their_prompt():
    catalog = load_catalog()
    prompt = catalog.llm.system_prompt
    assert prompt.startswith(f"You are {catalog.bot_name}, {catalog.bot_description}.")
    assert "{" not in prompt and "}" not in prompt
    meal = catalog.intent("meal_plan").prompt
    assert meal.startswith("Write a meal plan")
    assert "\n" not in meal and "  " not in meal  # white space normalised
    assert all(spec.prompt for spec in catalog.intents)


def test_an_intent_without_a_prompt_has_an_empty_one(tmp_path):
    def drop_prompt(raw: dict[str, Any]) -> None:
        for intent in raw["intents"]:
            if intent["name"] == "chat":
                del intent["prompt"]

    assert load_catalog(write_catalog(tmp_path, drop_prompt)).intent("chat").prompt == ""


def test_unknown_model_and_tier_are_catalog_errors():
    catalog = load_catalog()
    with pytest.raises(CatalogError, match=r"costs\.llm_models.*'gpt-9'"):
        catalog.costs.model("gpt-9")
    with pytest.raises(CatalogError, match=r"llm\.tiers.*'blocked'"):
        catalog.llm.tier("blocked")
    assert isinstance(catalog.llm, LlmSettings)


# --- cost_musd ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "prompt_tokens", "completion_tokens", "musd"),
    [
        # USD per million tokens x tokens = µUSD exactly
        ("gpt-4o-mini", 1000, 400, 150 + 240),
        ("gpt-4o-mini", 0, 0, 0),
        ("gpt-4o-mini", 1, 0, 1),  # 0.15 µUSD rounds UP to 1
        ("gpt-4o-mini", 0, 1, 1),  # 0.60 -> 1
        ("gpt-4o-mini", 1, 1, 1),  # 0.75 -> 1
        ("gpt-4o-mini", 7, 0, 2),  # 1.05 -> 2, never down
        ("gpt-4o-mini", 20, 0, 3),  # 3.00 exactly stays 3
        ("gpt-4o-mini", 1_000_000, 1_000_000, 750_000),  # $0.15 + $0.60
        ("gpt-4.1-mini", 1_000_000, 0, 400_000),
        ("gpt-4.1-nano", 2000, 150, 200 + 60),
    ],
)
def test_cost_musd_is_exact_and_rounded_up(model, prompt_tokens, completion_tokens, musd):
    cost = load_catalog().costs.model(model).cost_musd(prompt_tokens, completion_tokens)
    assert cost == musd and type(cost) is int


def test_cost_musd_has_no_float_error():
    """0.1 + 0.2 style errors would make 3 x 0.10 x 10 = 3.0000000000000004 -> 4 µUSD."""
    price = ModelPrice("m", Decimal("0.10"), Decimal("0.20"))
    assert price.cost_musd(10, 10) == 3
    assert price.cost_musd(30, 0) == 3


def test_the_normal_tier_answer_ceiling_is_cheap():
    """The output cost of one answer is bounded by max_tokens (docs/economy.md): 400 x $0.60/M."""
    catalog = load_catalog()
    tier = catalog.llm.tier("normal")
    assert catalog.costs.model(tier.model).cost_musd(0, tier.max_tokens) == 240


# --- errors ---------------------------------------------------------------------------------


def _set(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _delete(*path: str | int) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("llm", "tiers", "reduced", "model", value="gpt-5-turbo"),
         r"llm\.tiers\.reduced\.model: 'gpt-5-turbo' has no price in costs\.llm_models"),
        (_set("costs", "messaging", "sms", "inbound_usd", value=0.0079),
         r"costs\.messaging\.sms\.inbound_usd: a decimal string"),
        (_set("costs", "llm_models", "gpt-4o-mini", "input_usd_per_million", value=0.15),
         r"costs\.llm_models\.gpt-4o-mini\.input_usd_per_million: a decimal string"),
        (_set("costs", "platform_usd", value=0),
         r"costs\.platform_usd: a decimal string"),
        (_set("costs", "messaging", "whatsapp", "outbound_usd", value="-0.0075"),
         r"costs\.messaging\.whatsapp\.outbound_usd: must be a non-negative"),
        (_set("costs", "llm_models", "gpt-4.1-nano", "output_usd_per_million", value="-1"),
         r"costs\.llm_models\.gpt-4\.1-nano\.output_usd_per_million: must be a non-negative"),
        (_set("costs", "llm_models", "gpt-4.1-nano", "output_usd_per_million", value="NaN"),
         r"costs\.llm_models\.gpt-4\.1-nano\.output_usd_per_million"),
        (_set("costs", "platform_usd", value="0.0000001"),
         r"costs\.platform_usd: must be a whole number of µUSD"),
        (_set("costs", "messaging", "sms", "outbound_usd", value="cheap"),
         r"costs\.messaging\.sms\.outbound_usd: a decimal string"),
        (_delete("llm", "tiers", "normal"),
         r"llm\.tiers: settings for the 'normal' LLM tier are required"),
        (_set("llm", "system_prompt", value="You are {bot_name}. {oops}"),
         r"llm\.system_prompt: only \{bot_name\} and \{bot_description\}"),
        (_set("llm", "system_prompt", value="You are {0}."), r"llm\.system_prompt"),
        (_set("llm", "system_prompt", value="Unclosed {bot_name"), r"llm\.system_prompt"),
        (_set("costs", "messaging", "sms", "unit", value="character"),
         r"costs\.messaging\.sms\.unit: one of segment, message, not 'character'"),
        (_delete("costs", "messaging", "whatsapp"),
         r"costs\.messaging\.whatsapp: a mapping is required"),
        (_set("costs", "llm_models", value={}), r"costs\.llm_models: a mapping is required"),
        (_set("costs", "llm_models", "gpt-4o-mini", value="0.15"),
         r"costs\.llm_models\.gpt-4o-mini: a mapping is required"),
        (_set("llm", "tiers", "normal", "max_tokens", value=0),
         r"llm\.tiers\.normal\.max_tokens: a positive integer"),
        (_set("llm", "tiers", "reduced", "max_input_chars", value=True),
         r"llm\.tiers\.reduced\.max_input_chars: a positive integer"),
        (_set("llm", "history_messages", value=-1), r"llm\.history_messages"),
        (_set("llm", "cache_ttl_seconds", value=0), r"llm\.cache_ttl_seconds"),
        (_delete("costs"), r"costs: a mapping is required"),
        (_delete("llm"), r"llm: a mapping is required"),
        (_set("sms_max_segments", value=0), r"sms_max_segments: a positive integer"),
        (_delete("sms_max_segments"), r"sms_max_segments: a positive integer"),
        (_set("intents", 0, "prompt", value=["a list"]), r"intents\[0\]\.prompt: must be a string"),
    ],
    ids=[
        "tier-model-without-price", "float-sms-rate", "float-model-price", "int-platform",
        "negative-rate", "negative-model-price", "nan-model-price", "sub-µUSD",
        "not-a-number", "no-normal-tier", "bad-placeholder", "positional-placeholder",
        "unclosed-placeholder", "bad-unit", "missing-channel", "no-models", "model-not-mapping",
        "zero-max-tokens", "bool-max-input", "negative-history", "zero-cache-ttl", "no-costs",
        "no-llm", "zero-sms-segments", "missing-sms-segments", "prompt-not-string",
    ],
)
def test_a_bad_cost_or_llm_setting_is_refused_with_the_field_named(tmp_path, edit, message):
    path = write_catalog(tmp_path, edit)
    with pytest.raises(CatalogError, match=message) as error:
        load_catalog(path)
    assert str(path) in str(error.value)


def test_an_unquoted_float_in_yaml_text_is_refused(tmp_path):
    """Written by hand, `inbound_usd: 0.0079` is a YAML float: money is never a float."""
    text = DEFAULT_CATALOG_PATH.read_text(encoding="utf-8")
    assert 'inbound_usd: "0.0079"' in text
    path = tmp_path / "economy.yaml"
    path.write_text(text.replace('inbound_usd: "0.0079"', "inbound_usd: 0.0079"),
                    encoding="utf-8")
    with pytest.raises(CatalogError, match=r"costs\.messaging\.sms\.inbound_usd"):
        load_catalog(path)


def test_another_catalog_can_change_rates_models_and_llm_tiers(tmp_path):
    def edit(raw: dict[str, Any]) -> None:
        raw["costs"]["platform_usd"] = "0.001"
        raw["costs"]["messaging"]["sms"]["outbound_usd"] = "0.0083"
        raw["costs"]["llm_models"]["local-llama"] = {
            "input_usd_per_million": "0", "output_usd_per_million": "0.000001",
        }
        raw["llm"]["tiers"]["reduced"]["model"] = "local-llama"

    catalog = load_catalog(write_catalog(tmp_path, edit, sms_max_segments=3))
    assert catalog.costs.platform_musd == 1000
    assert catalog.costs.messaging["sms"].outbound_musd == 8300
    assert catalog.costs.messaging["sms"].inbound_musd == 7900
    assert catalog.llm.tier("reduced").model == "local-llama"
    # a tiny but non-zero price still costs at least 1 µUSD once anything is used
    assert catalog.costs.model("local-llama").cost_musd(10_000, 1) == 1
    assert catalog.costs.model("local-llama").cost_musd(10_000, 0) == 0
    assert catalog.sms_max_segments == 3


def test_prices_other_than_usd_are_refused(tmp_path):
    """Revenue is kept in µUSD, so a pack or the plan priced in another currency would be
    counted wrong: the catalog refuses it, naming the field."""
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    raw["packs"][0]["currency"] = "eur"
    path = tmp_path / "eur_pack.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogError, match=r"packs\[0\]\.currency: only usd"):
        load_catalog(path)
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    raw["premium"]["currency"] = "EUR"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogError, match=r"premium\.currency: only usd"):
        load_catalog(path)


def test_a_catalog_with_the_old_tiers_section_is_told_it_is_now_levels(tmp_path):
    """Before issue #18 the restriction ladder was `tiers:`; such a file is refused with the
    new name, not with "levels: a mapping is required"."""
    def edit(raw: dict[str, Any]) -> None:
        raw["tiers"] = raw.pop("levels")

    with pytest.raises(CatalogError, match=r"economy\.yaml: tiers: the section is now called "
                                           r"levels"):
        load_catalog(write_catalog(tmp_path, edit))


def test_the_llm_tiers_are_not_levels(tmp_path):
    """The model settings stay `llm.tiers` (an LLM tier is not a level): `llm.levels` is
    refused with the name to use."""
    def edit(raw: dict[str, Any]) -> None:
        raw["llm"]["levels"] = raw["llm"].pop("tiers")

    with pytest.raises(CatalogError, match=r"llm\.levels: the LLM tiers are llm\.tiers"):
        load_catalog(write_catalog(tmp_path, edit))
