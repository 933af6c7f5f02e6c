"""The economy catalog: shipped defaults pinned, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tokens.catalog import DEFAULT_CATALOG_PATH, load_catalog, normalise_command
from tokens.errors import CatalogError


def test_default_catalog_matches_economy_md():
    catalog = load_catalog()
    assert catalog.token_price_musd == 50_000  # $0.05
    assert catalog.free_monthly_allowance == 100
    assert {s.name: s.price for s in catalog.intents} == {
        "chat": 1,
        "meal_plan": 5,
        "grocery_list": 2,
        "nutrition_analysis": 3,
        "recipe_search": 2,
        "dietary_advice": 4,
    }
    starter = catalog.pack()
    assert (starter.name, starter.price_cents, starter.tokens, starter.bonus_tokens) == (
        "Starter", 500, 100, 20,
    )
    assert starter.total_tokens == 120 and starter.price_display == "$5.00"
    assert catalog.pay_link_ttl_seconds == 72 * 3600
    assert "BUYTOKENS" in catalog.commands["buy"]


def write_catalog(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    raw.update(changes)
    path = tmp_path / "economy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_another_catalog_file_changes_prices(tmp_path):
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    for intent in raw["intents"]:
        if intent["name"] == "meal_plan":
            intent["price"] = 8
    path = write_catalog(tmp_path, intents=raw["intents"], free_monthly_allowance=50)
    catalog = load_catalog(path)
    assert catalog.intent("meal_plan").price == 8
    assert catalog.free_monthly_allowance == 50


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"free_monthly_allowance": 0}, "free_monthly_allowance: a positive integer"),
        ({"free_monthly_allowance": 2.5}, "free_monthly_allowance: a positive integer"),
        ({"token_list_price_usd": "abc"}, "token_list_price_usd"),
        ({"token_list_price_usd": "0.0000001"}, "whole number of µUSD"),
        ({"default_intent": "astrology"}, "default_intent"),
        ({"default_pack": "gold"}, "default_pack"),
        ({"packs": []}, "packs: a non-empty list"),
        ({"intents": [{"name": "chat", "label": "chat", "price": 1, "example": "hi",
                       "patterns": ["(unclosed"]}], "default_intent": "chat"}, "not a valid regex"),
    ],
)
def test_a_bad_catalog_is_refused_with_the_field_named(tmp_path, changes, message):
    path = write_catalog(tmp_path, **changes)
    with pytest.raises(CatalogError, match=message.replace("(", r"\(")) as error:
        load_catalog(path)
    assert str(path) in str(error.value)


def test_a_missing_catalog_file_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogError, match="cannot read the economy catalog"):
        load_catalog(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [(" buy  tokens! ", "BUYTOKENS"), ("Más", "MAS"), ("Stop.", "STOP"), ("opt out", "OPTOUT")],
)
def test_commands_compare_without_case_spaces_accents_or_final_punctuation(text, expected):
    assert normalise_command(text) == expected


@pytest.mark.parametrize(("text", "language"), [
    ("LANGUAGE ES", "es"), ("idioma inglés", "en"), ("Español", "es"), ("ENGLISH", "en"),
    ("lang en", "en"), ("IDIOMA", ""), ("language", ""),
])
def test_the_language_command_and_its_choices(text, language):
    catalog = load_catalog()
    command = normalise_command(text)
    assert command in catalog.commands["language"]
    assert catalog.language_choices[command] == language


def test_es_and_en_alone_are_not_commands():
    catalog = load_catalog()
    words = frozenset().union(*catalog.commands.values())
    assert "ES" not in words and "EN" not in words


def test_spanish_labels_and_description_fall_back_to_english(tmp_path):
    catalog = load_catalog()
    assert catalog.intent("meal_plan").label_in("es") == "plan de comidas"
    assert catalog.description_in("es").startswith("un asistente de nutrición")
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    for intent in raw["intents"]:
        intent.pop("label_es", None)
    del raw["bot"]["description_es"]
    other = load_catalog(write_catalog(tmp_path, intents=raw["intents"], bot=raw["bot"]))
    assert other.intent("meal_plan").label_in("es") == "meal plan"
    assert other.description_in("es") == other.bot_description


@pytest.mark.parametrize(("names", "message"), [
    ({"en": ["EN"], "fr": ["FR"]}, "the languages are en, es"),
    ({"en": ["EN", "ES"], "es": ["ES"]}, "names two languages"),
    ({"en": ["EN"]}, "names for each of en, es"),
    ({"en": ["EN"], "es": ["MORE"]}, "another command already"),
])
def test_bad_language_names_are_refused(tmp_path, names, message):
    with pytest.raises(CatalogError, match=message):
        load_catalog(write_catalog(tmp_path, language_names=names))


def test_premium_may_not_sell_tokens_cheaper_than_the_best_pack(tmp_path):
    """Issue #16: premium's tokens are priced like the packs (it sells full answers, not cheaper
    tokens): 121 tokens for $5.00 beats the Starter pack's 120 and is refused."""
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text(encoding="utf-8"))
    assert load_catalog(DEFAULT_CATALOG_PATH).premium.monthly_tokens == 120
    raw["premium"]["monthly_tokens"] = 121
    path = tmp_path / "economy.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(CatalogError, match="more tokens per dollar than the Starter pack"):
        load_catalog(path)
