"""Configuration from the environment; production refuses unsafe defaults."""

from __future__ import annotations

import pytest

from app.config import PROJECT_ROOT, Config, ConfigError, database_url


def test_production_refuses_missing_secrets():
    with pytest.raises(ConfigError, match="SECRET_KEY, TWILIO_AUTH_TOKEN"):
        Config(environ={"APP_ENV": "production"})
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        Config(environ={"APP_ENV": "production", "SECRET_KEY": "s" * 32, "TWILIO_AUTH_TOKEN": "t"})
    ok = Config(environ={"APP_ENV": "production", "SECRET_KEY": "s" * 32, "TWILIO_AUTH_TOKEN": "t",
                         "PUBLIC_BASE_URL": "https://bot.example.com/"})
    assert ok.PUBLIC_BASE_URL == "https://bot.example.com"


def test_unknown_app_env_is_refused():
    with pytest.raises(ConfigError, match="APP_ENV"):
        Config(environ={"APP_ENV": "staging"})


def test_embedded_defaults():
    config = Config(environ={})
    assert config.APP_ENV == "development"
    expected_db = PROJECT_ROOT / "instance" / "bot.db"
    uri = config.SQLALCHEMY_DATABASE_URI
    assert uri == f"sqlite:///{expected_db}"
    assert config.PUBLIC_BASE_URL == "http://localhost:5000"
    assert config.SECRET_KEY and config.TWILIO_AUTH_TOKEN
    assert config.REDIS_URL is None and config.STRIPE_SECRET_KEY is None


def test_database_urls():
    assert database_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_a_broken_economy_file_stops_the_app_at_start(make_app, tmp_path):
    bad = tmp_path / "economy.yaml"
    bad.write_text("intents: [")
    with pytest.raises(ConfigError, match="ECONOMY_FILE"):
        make_app(database_url=f"sqlite:///{tmp_path / 'x.db'}", ECONOMY_FILE=str(bad))


PRODUCTION = {"APP_ENV": "production", "SECRET_KEY": "s" * 32, "TWILIO_AUTH_TOKEN": "t",
              "PUBLIC_BASE_URL": "https://bot.example.com"}


@pytest.mark.parametrize("change, reason", [
    ({"SECRET_KEY": "short"}, "at least 32 characters"),
    ({"TWILIO_AUTH_TOKEN": "development-only-twilio-auth-token"}, "development token"),
    ({"ADMIN_API_TOKEN": "guessable"}, "ADMIN_API_TOKEN"),
    ({"STRIPE_SECRET_KEY": "sk_live_x"}, "STRIPE_WEBHOOK_SECRET"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
])
def test_production_refuses_weak_or_missing_secrets(change, reason):
    with pytest.raises(ConfigError, match=reason):
        Config(environ={**PRODUCTION, **change})


def test_production_never_uses_the_sandbox_payment_provider(make_app, tmp_path):
    app = make_app(database_url=f"sqlite:///{tmp_path / 'x.db'}", **PRODUCTION)
    assert app.extensions["payment_provider"] is None
    client = app.test_client()
    assert client.get("/sandbox/checkout/cs_test_1").status_code == 404


def test_web_pages_carry_security_headers(client):
    page = client.get("/pay/not-a-token")
    assert page.status_code == 404
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'none'" in page.headers["Content-Security-Policy"]
    assert len(page.headers["X-Request-Id"]) == 16
    given = client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    forged = client.get("/healthz", headers={"X-Request-Id": "<script>"})
    assert forged.headers["X-Request-Id"] != "<script>"


@pytest.mark.parametrize("url", ["https://bot.example.com", "http://10.0.0.5:5000",
                                 "http://0.0.0.0:5000"])
def test_unset_app_env_on_a_public_url_refuses_the_development_defaults(url):
    with pytest.raises(ConfigError) as refused:
        Config(environ={"PUBLIC_BASE_URL": url})
    reason = str(refused.value)
    for name in ("APP_ENV", "SECRET_KEY", "TWILIO_AUTH_TOKEN", "STRIPE_SECRET_KEY"):
        assert name in reason
    # the development token set by hand is the same open door
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        Config(environ={"PUBLIC_BASE_URL": url, "SECRET_KEY": "s" * 32,
                        "STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_WEBHOOK_SECRET": "whsec_x",
                        "TWILIO_AUTH_TOKEN": "development-only-twilio-auth-token"})
    # every secret set: no development default is used, so it starts
    Config(environ={"PUBLIC_BASE_URL": url, "SECRET_KEY": "s" * 32, "TWILIO_AUTH_TOKEN": "t",
                    "STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_WEBHOOK_SECRET": "whsec_x"})


@pytest.mark.parametrize("url", ["http://localhost:5000", "http://127.0.0.1:8000",
                                 "http://[::1]:5000", "http://bot.localhost"])
def test_development_defaults_on_loopback_or_on_purpose(url):
    config = Config(environ={"PUBLIC_BASE_URL": url})
    assert config.SECRET_KEY and config.TWILIO_AUTH_TOKEN
    explicit = Config(environ={"APP_ENV": "development",
                               "PUBLIC_BASE_URL": "https://abc.ngrok.example"})
    assert explicit.TWILIO_AUTH_TOKEN == "development-only-twilio-auth-token"
