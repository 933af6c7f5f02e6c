"""Settings for sending through the Twilio REST API and for LLM answers: timeouts, the
REDIS_URL rule, the OPENAI_MODEL override and the chat client the app builds."""

from __future__ import annotations

import pytest

from app.config import Config, ConfigError
from app.extensions import bot_settings, outbound_settings
from bot.llm import CachedChat, ChatRequest, MemoryCache, OpenAIChat
from testing.openai_standin import OpenAIStandIn
from tokens.catalog import load_catalog

SENDER = {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_SMS_FROM": "+15005550006"}


# --- new settings ------------------------------------------------------------------------------


def test_defaults_of_the_sending_and_llm_settings():
    config = Config(environ={})
    assert config.TWILIO_WHATSAPP_TEMPLATE_SID is None
    assert config.TWILIO_TIMEOUT_SECONDS == 10.0
    assert config.TWILIO_RETRY_BACKOFF_SECONDS == 0.5
    assert config.OPENAI_TIMEOUT_SECONDS == 10.0
    assert config.OPENAI_API_KEY is None and config.OPENAI_MODEL is None


def test_settings_are_read_from_the_environment():
    config = Config(environ={
        "TWILIO_WHATSAPP_TEMPLATE_SID": "HX" + "a" * 32,
        "TWILIO_TIMEOUT_SECONDS": "2.5",
        "TWILIO_RETRY_BACKOFF_SECONDS": "0",
        "OPENAI_TIMEOUT_SECONDS": "7",
    })
    assert config.TWILIO_WHATSAPP_TEMPLATE_SID == "HX" + "a" * 32
    assert config.TWILIO_TIMEOUT_SECONDS == 2.5
    assert config.TWILIO_RETRY_BACKOFF_SECONDS == 0.0  # no backoff is allowed
    assert config.OPENAI_TIMEOUT_SECONDS == 7.0
    assert isinstance(config.OPENAI_TIMEOUT_SECONDS, float)


def test_empty_values_mean_the_defaults():
    config = Config(environ={"TWILIO_TIMEOUT_SECONDS": "", "OPENAI_TIMEOUT_SECONDS": "",
                             "TWILIO_WHATSAPP_TEMPLATE_SID": "", "REDIS_URL": ""})
    assert config.TWILIO_TIMEOUT_SECONDS == 10.0 and config.OPENAI_TIMEOUT_SECONDS == 10.0
    assert config.TWILIO_WHATSAPP_TEMPLATE_SID is None and config.REDIS_URL is None


@pytest.mark.parametrize(
    "name", ["TWILIO_TIMEOUT_SECONDS", "OPENAI_TIMEOUT_SECONDS", "TWILIO_RETRY_BACKOFF_SECONDS"]
)
@pytest.mark.parametrize("raw", ["ten", "10s", "-1", "-0.5", "nan", "1,5"])
def test_a_bad_duration_is_refused_naming_the_setting(name, raw):
    with pytest.raises(ConfigError, match=name) as error:
        Config(environ={name: raw})
    assert repr(raw) in str(error.value)


@pytest.mark.parametrize("name", ["TWILIO_TIMEOUT_SECONDS", "OPENAI_TIMEOUT_SECONDS"])
@pytest.mark.parametrize("raw", ["0", "0.0", "-0"])
def test_a_zero_timeout_is_refused(name, raw):
    with pytest.raises(ConfigError, match=f"{name} must be a positive number of seconds"):
        Config(environ={name: raw})


@pytest.mark.parametrize("name", ["TWILIO_TIMEOUT_SECONDS", "OPENAI_TIMEOUT_SECONDS"])
@pytest.mark.parametrize("raw", ["inf", "1e999"])
def test_an_infinite_timeout_is_refused(name, raw):
    with pytest.raises(ConfigError, match=name):
        Config(environ={name: raw})


# --- REDIS_URL needs a way to send -------------------------------------------------------------


def test_redis_url_needs_the_account_sid():
    with pytest.raises(ConfigError, match="TWILIO_ACCOUNT_SID"):
        Config(environ={"REDIS_URL": "redis://localhost:6379/0",
                        "TWILIO_SMS_FROM": "+15005550006"})


def test_redis_url_needs_a_sender():
    with pytest.raises(ConfigError) as error:
        Config(environ={"REDIS_URL": "redis://localhost:6379/0",
                        "TWILIO_ACCOUNT_SID": SENDER["TWILIO_ACCOUNT_SID"]})
    for name in ("TWILIO_SMS_FROM", "TWILIO_WHATSAPP_FROM", "TWILIO_MESSAGING_SERVICE_SID"):
        assert name in str(error.value)


@pytest.mark.parametrize(
    "sender",
    [
        {"TWILIO_SMS_FROM": "+15005550006"},
        {"TWILIO_WHATSAPP_FROM": "whatsapp:+14155238886"},
        {"TWILIO_MESSAGING_SERVICE_SID": "MG" + "1" * 32},
    ],
)
def test_any_one_sender_is_enough_with_redis(sender):
    config = Config(environ={"REDIS_URL": "redis://localhost:6379/0", "TWILIO_AUTH_TOKEN": "t",
                             "TWILIO_ACCOUNT_SID": SENDER["TWILIO_ACCOUNT_SID"], **sender})
    assert config.REDIS_URL == "redis://localhost:6379/0"


def test_redis_url_needs_a_real_auth_token():
    """The development token would make every REST send a 401."""
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        Config(environ={"REDIS_URL": "redis://localhost:6379/0",
                        "TWILIO_ACCOUNT_SID": SENDER["TWILIO_ACCOUNT_SID"],
                        "TWILIO_SMS_FROM": "+15005550006"})


def test_the_redis_rule_applies_in_production_too():
    production = {"APP_ENV": "production", "SECRET_KEY": "s" * 32, "TWILIO_AUTH_TOKEN": "t",
                  "PUBLIC_BASE_URL": "https://bot.example.com", "REDIS_URL": "redis://r:6379"}
    with pytest.raises(ConfigError, match="TWILIO_ACCOUNT_SID"):
        Config(environ=production)
    assert Config(environ={**production, **SENDER}).REDIS_URL == "redis://r:6379"


def test_without_redis_no_sender_is_needed():
    config = Config(environ={})
    assert config.REDIS_URL is None and config.TWILIO_ACCOUNT_SID is None


# --- the app: OPENAI_MODEL and the chat client ------------------------------------------------


def test_openai_model_replaces_the_normal_tiers_model(make_app):
    app = make_app(OPENAI_API_KEY="k", OPENAI_MODEL="gpt-4.1-mini")
    catalog = bot_settings(app).catalog
    shipped = load_catalog()
    normal = catalog.llm.tier("normal")
    assert normal.model == "gpt-4.1-mini"
    # only the model changes: the caps and the other tiers stay the catalog's
    assert (normal.max_tokens, normal.max_input_chars) == (
        shipped.llm.tier("normal").max_tokens, shipped.llm.tier("normal").max_input_chars,
    )
    assert catalog.llm.tier("reduced") == shipped.llm.tier("reduced")
    assert catalog.costs == shipped.costs
    assert catalog.costs.model(normal.model).input_usd_per_million == shipped.costs.model(
        "gpt-4.1-mini").input_usd_per_million
    # the shipped catalog itself is untouched
    assert load_catalog().llm.tier("normal").model == "gpt-4o-mini"


def test_an_unpriced_openai_model_stops_the_app_listing_the_known_ones(make_app):
    with pytest.raises(ConfigError, match="OPENAI_MODEL 'gpt-5'") as error:
        make_app(OPENAI_API_KEY="k", OPENAI_MODEL="gpt-5")
    for known in ("gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o-mini"):
        assert known in str(error.value)


def test_without_openai_model_the_catalog_model_is_kept(make_app):
    app = make_app(OPENAI_API_KEY="k")
    assert bot_settings(app).catalog.llm.tier("normal").model == "gpt-4o-mini"


def test_with_an_api_key_the_bot_gets_a_cached_openai_client(make_app):
    app = make_app(OPENAI_API_KEY="k", OPENAI_TIMEOUT_SECONDS="3", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    chat = bot_settings(app).chat
    assert isinstance(chat, CachedChat)
    assert isinstance(chat.cache, MemoryCache)  # no REDIS_URL: the in-process cache
    assert chat.ttl_seconds == load_catalog().llm.cache_ttl_seconds
    assert isinstance(chat.client, OpenAIChat)
    client = chat.client.client
    assert client.api_key == "k"
    assert str(client.base_url).rstrip("/") == "http://127.0.0.1:9/v1"
    assert client.max_retries == 0  # inline answers: no library retries within Twilio's 15 s
    assert client.timeout == 3.0


def test_without_an_api_key_there_is_no_chat_client(make_app):
    app = make_app()
    assert bot_settings(app).chat is None
    app = make_app(OPENAI_API_KEY="")
    assert bot_settings(app).chat is None


def test_the_app_chat_client_answers_through_the_configured_api(make_app):
    """End to end: the app's client sends the overridden model to OPENAI_BASE_URL with the key,
    and answers an identical request from its cache."""
    with OpenAIStandIn(reply="Oats, lentils, tofu.") as standin:
        app = make_app(OPENAI_API_KEY="sk-app", OPENAI_BASE_URL=standin.base_url,
                       OPENAI_MODEL="gpt-4.1-mini")
        settings = bot_settings(app)
        tier = settings.catalog.llm.tier("normal")
        request = ChatRequest(tier.model, (("system", "be brief"), ("user", "meal plan")),
                              tier.max_tokens)
        first = settings.chat.complete(request)
        second = settings.chat.complete(request)
        assert (first.text, first.cached, second.cached) == ("Oats, lentils, tofu.", False, True)
        assert first.usage is not None and first.usage.model == "gpt-4.1-mini"
        (body,) = standin.bodies
        assert (body["model"], body["max_tokens"]) == ("gpt-4.1-mini", 400)
        assert standin.requests[0]["headers"]["authorization"] == "Bearer sk-app"


def test_the_outbound_settings_come_from_the_config(make_app):
    app = make_app(TWILIO_WHATSAPP_TEMPLATE_SID="HX" + "b" * 32,
                   TWILIO_RETRY_BACKOFF_SECONDS="0.25")
    outbound = outbound_settings(app)
    assert outbound.whatsapp_template_sid == "HX" + "b" * 32
    assert outbound.backoff_seconds == 0.25
    assert outbound.status_callback_url == "https://bot.example.com/webhooks/twilio/status"
