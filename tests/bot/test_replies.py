"""The reply catalog (bot/content/replies.yaml): every reply in English and Spanish with the
same placeholders, and every wording function in both languages."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bot import replies
from bot.replies import REPLIES_PATH, ReplyCatalogError, load_replies, placeholders
from bot.segments import count_segments, fold_for_gsm, normalise_for_gsm
from tokens.catalog import LANGUAGES, load_catalog

CATALOG = load_catalog()
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
URL = "https://bot.example.com/pay/" + "x" * 43  # a real pay link's length


def test_every_reply_has_both_languages_and_the_same_placeholders():
    raw = yaml.safe_load(REPLIES_PATH.read_text(encoding="utf-8"))["replies"]
    assert len(raw) >= 40
    for key, texts in raw.items():
        assert set(texts) == set(LANGUAGES), key
        assert placeholders(texts["en"]) == placeholders(texts["es"]), key
        assert texts["en"] != texts["es"], key
    loaded = load_replies()
    assert set(loaded.texts) == set(raw)
    assert loaded.months["es"][0] == "enero" and loaded.months["en"][11] == "Dec"


def write(tmp_path: Path, replies_section: dict[str, object]) -> Path:
    raw = yaml.safe_load(REPLIES_PATH.read_text(encoding="utf-8"))
    raw["replies"].update(replies_section)
    path = tmp_path / "replies.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(("section", "message"), [
    ({"greeting": {"en": "Hi"}}, "replies.greeting: a text in each of en, es"),
    ({"greeting": {"en": "Hi {name}", "es": "Hola"}}, "different placeholders"),
    ({"greeting": {"en": "Hi", "es": "Hola", "fr": "Salut"}}, "a text in each of en, es"),
    ({"greeting": "Hi"}, "a text in each of en, es"),
])
def test_a_reply_missing_a_language_or_a_placeholder_is_refused(tmp_path, section, message):
    with pytest.raises(ReplyCatalogError, match=message):
        load_replies(write(tmp_path, section))


def test_an_unreadable_catalog_is_a_clear_error(tmp_path):
    with pytest.raises(ReplyCatalogError, match="cannot read the reply catalog"):
        load_replies(tmp_path / "nope.yaml")


def every_reply(lang: str) -> dict[str, str]:
    """Each wording function's text in `lang`, with realistic values."""
    pack, plan = CATALOG.pack(), CATALOG.premium
    meal_plan = CATALOG.intent("meal_plan")
    return {
        "help": replies.help_text(CATALOG, NOW, lang),
        "help_short": replies.help_short_text(CATALOG, lang),
        "balance": replies.balance_text(CATALOG, 95, NOW, lang),
        "balance_empty": replies.balance_text(CATALOG, 0, NOW, lang),
        "buy": replies.buy_text(pack, URL, lang),
        "premium": replies.premium_text(plan, URL, lang),
        "premium_manage": replies.premium_manage_text(plan, URL, lang),
        "pack_credited": replies.pack_credited_text(120, 220, lang),
        "low_balance": replies.low_balance_text(CATALOG, 3, URL, lang),
        "empty_balance": replies.low_balance_text(CATALOG, 0, URL, lang),
        "auto_topup_consent": replies.auto_topup_consent_text(CATALOG, pack, URL, lang),
        "auto_topup_on": replies.auto_topup_on_text(CATALOG, pack, lang),
        "auto_topup_off": replies.auto_topup_off_text(lang),
        "auto_topup_unavailable": replies.auto_topup_unavailable_text(lang),
        "auto_topup_credited": replies.auto_topup_credited_text(120, 123, lang),
        "auto_topup_failed": replies.auto_topup_failed_text(URL, lang),
        "premium_started": replies.premium_started_text(plan, lang),
        "premium_ended": replies.premium_ended_text(plan, lang),
        "billing_problem": replies.billing_problem_text(URL, lang),
        "premium_unpaid": replies.premium_unpaid_text(plan, URL, lang),
        "past_due": replies.past_due_text(plan, NOW, URL, lang),
        "grace_ended": replies.grace_ended_text(plan, URL, lang),
        "premium_ending": replies.premium_ending_text(plan, NOW, URL, lang),
        "payment_failed": replies.payment_failed_text(lang),
        "insufficient": replies.insufficient_text(CATALOG, meal_plan, 2, URL, NOW, lang),
        "stop": replies.stop_text(CATALOG, lang),
        "start": replies.start_text(CATALOG, lang),
        "reduced": replies.level_notice(CATALOG, "REDUCED", 40, lang),
        "basic": replies.level_notice(CATALOG, "BASIC", 40, lang),
        "affiliate": replies.level_notice(CATALOG, "AFFILIATE", 40, lang),
        "offers": replies.offers_text(CATALOG, meal_plan, 40, [("FreshBox", URL)], NOW, lang),
        "payment_required": replies.payment_required_text(CATALOG, 4, URL, NOW, lang),
        "language_set": replies.language_set_text(lang),
        "language_help": replies.language_help_text(lang),
        "no_text": replies.no_text(lang),
        "nothing_more": replies.nothing_more(lang),
        "skill_failed": replies.skill_failed(lang),
        "throttled": replies.throttled(lang),
        "offline_free": replies.offline_free(lang),
        "took_too_long": replies.took_too_long(lang),
        **{f"small_{kind}": replies.small_talk_text(kind, CATALOG, lang)
           for kind in ("thanks", "ack", "stop_request", "no_subscription")},
    }


def test_every_reply_is_written_in_both_languages():
    english, spanish = every_reply("en"), every_reply("es")
    for name in english:
        assert "{" not in english[name] and "{" not in spanish[name], name
        assert english[name] != spanish[name], name
    assert "Dec 1" in english["help"] and "1 de diciembre" in spanish["help"]
    assert "$5.00" in english["buy"] and "$5.00" in spanish["buy"]
    assert "Enlaces de afiliados" in spanish["offers"] and "Socios para tu plan de comidas" \
        in spanish["offers"]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_carrier_keywords_stay_in_every_language(lang):
    texts = every_reply(lang)
    assert "STOP" in texts["help"]
    assert "HELP" in texts["start"] and "HELP" in texts["nothing_more"]
    assert "START" in texts["stop"] and "STOP" in texts["start"]
    assert "STOP" in texts["small_stop_request"]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_refusals_and_offers_keep_the_pay_link_in_the_first_two_sms_segments(lang):
    """Refusals are capped at 2 segments (the rest via MORE): the link must come before."""
    for name in ("insufficient", "payment_required", "buy", "premium"):
        text = fold_for_gsm(normalise_for_gsm(every_reply(lang)[name]))
        head = text[: text.index(URL) + len(URL)]
        assert count_segments(head).encoding == "GSM-7", (lang, name)
        assert count_segments(head).segments <= 2, (lang, name)


def test_an_unknown_language_reads_as_english():
    assert replies.no_text("fr") == replies.no_text() == replies.NO_TEXT
    assert replies.date_text(datetime(2027, 1, 1, tzinfo=UTC), "es") == "1 de enero"
    assert replies.date_text(datetime(2027, 1, 1, tzinfo=UTC), "en") == "Jan 1"


def test_the_old_english_constants_still_read():
    assert replies.skill_failed("en") == replies.SKILL_FAILED
    assert replies.OFFLINE_FREE.startswith("(A shorter answer")
    assert replies.took_too_long() == replies.TOOK_TOO_LONG
    with pytest.raises(AttributeError):
        _ = replies.NOT_A_REPLY
