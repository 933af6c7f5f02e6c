"""Configuration from the environment (docs/architecture.md, "Configuration").

`.env` is read in development only; production refuses unsafe defaults.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import load_dotenv

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "sqlite:///instance/bot.db"
DEFAULT_PUBLIC_BASE_URL = "http://localhost:5000"
# Development only: lets a newcomer sign test webhooks without a Twilio account. Production
# refuses to start without a real TWILIO_AUTH_TOKEN.
DEVELOPMENT_TWILIO_AUTH_TOKEN = "development-only-twilio-auth-token"
APP_ENVS = ("development", "test", "production")

log = logging.getLogger(__name__)


class ConfigError(RuntimeError):
    """The environment asks for something unsafe or impossible (e.g. production without a
    SECRET_KEY). Raised by `create_app`, so a bad deployment fails at start, not at the
    first request."""


def database_url(raw: str | None) -> str:
    """The SQLAlchemy URL for `DATABASE_URL`.

    A relative SQLite path is taken from the project root (and its folder created), so
    `sqlite:///instance/bot.db` means `<project>/instance/bot.db` whatever the working
    directory; `postgres://` and `postgresql://` URLs get the psycopg 3 driver.
    """
    url = raw or DEFAULT_DATABASE_URL
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url.removeprefix("sqlite:///")
        if path and not path.startswith(":memory:"):
            absolute = PROJECT_ROOT / path
            absolute.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{absolute}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


class Config:
    """Settings read from the environment when the class is instantiated.

    Flask reads the UPPER_CASE attributes (`app.config.from_object(Config())`).
    """

    load_dotenv_file = True

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        if environ is None:
            if self.load_dotenv_file and os.environ.get("APP_ENV", "development") == "development":
                load_dotenv(PROJECT_ROOT / ".env", override=False)
            environ = os.environ
        env = environ.get
        self.APP_ENV = env("APP_ENV") or "development"
        # Set on purpose (the environment or .env), not the default: see `_check_and_fill`.
        self.APP_ENV_EXPLICIT = bool(env("APP_ENV"))
        if self.APP_ENV not in APP_ENVS:
            raise ConfigError(f"APP_ENV must be one of {', '.join(APP_ENVS)}, not {self.APP_ENV!r}")
        self.SECRET_KEY = env("SECRET_KEY") or None
        self.SQLALCHEMY_DATABASE_URI = database_url(env("DATABASE_URL"))
        # hide_parameters: a failed statement's error (logged, kept by RQ for failed jobs)
        # must not carry a phone number or a message body. Pooled connections are tested
        # only after they sat idle (`app.extensions.ping_when_idle`), not on every checkout.
        self.SQLALCHEMY_ENGINE_OPTIONS = {"hide_parameters": True}
        self.REDIS_URL = env("REDIS_URL") or None
        self.PUBLIC_BASE_URL = (env("PUBLIC_BASE_URL") or DEFAULT_PUBLIC_BASE_URL).rstrip("/")
        self.TWILIO_ACCOUNT_SID = env("TWILIO_ACCOUNT_SID") or None
        self.TWILIO_AUTH_TOKEN = env("TWILIO_AUTH_TOKEN") or None
        self.TWILIO_SMS_FROM = env("TWILIO_SMS_FROM") or None
        self.TWILIO_WHATSAPP_FROM = env("TWILIO_WHATSAPP_FROM") or None
        self.TWILIO_MESSAGING_SERVICE_SID = env("TWILIO_MESSAGING_SERVICE_SID") or None
        self.TWILIO_API_BASE = env("TWILIO_API_BASE") or None
        self.TWILIO_WHATSAPP_TEMPLATE_SID = env("TWILIO_WHATSAPP_TEMPLATE_SID") or None
        self.TWILIO_TIMEOUT_SECONDS = _seconds(env, "TWILIO_TIMEOUT_SECONDS", 10.0)
        self.TWILIO_RETRY_BACKOFF_SECONDS = _seconds(env, "TWILIO_RETRY_BACKOFF_SECONDS", 0.5,
                                                     allow_zero=True)
        self.STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY") or None
        self.STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET") or None
        self.STRIPE_API_BASE = env("STRIPE_API_BASE") or None
        self.OPENAI_API_KEY = env("OPENAI_API_KEY") or None
        self.OPENAI_BASE_URL = env("OPENAI_BASE_URL") or None
        self.OPENAI_MODEL = env("OPENAI_MODEL") or None
        self.OPENAI_TIMEOUT_SECONDS = _seconds(env, "OPENAI_TIMEOUT_SECONDS", 10.0)
        self.ECONOMY_FILE = env("ECONOMY_FILE") or None
        self.ADMIN_API_TOKEN = env("ADMIN_API_TOKEN") or None
        # Bearer token of GET /metrics; production serves no metrics without it.
        self.METRICS_TOKEN = env("METRICS_TOKEN") or None
        self.LOG_FORMAT = env("LOG_FORMAT") or ("json" if self.APP_ENV == "production"
                                                else "console")
        if self.LOG_FORMAT not in ("json", "console"):
            raise ConfigError(f"LOG_FORMAT must be json or console, not {self.LOG_FORMAT!r}")
        self.LOG_LEVEL = (env("LOG_LEVEL") or "INFO").upper()
        if self.LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not "
                              f"{self.LOG_LEVEL!r}")
        # Admin pages: a signed session cookie (Secure in production, HttpOnly, SameSite=Lax)
        # that lapses after 8 hours; CSRF tokens are checked by the admin blueprint itself, so
        # provider webhooks (signed instead) are not subject to them.
        self.SESSION_COOKIE_SECURE = self.APP_ENV == "production"
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.PERMANENT_SESSION_LIFETIME = timedelta(hours=8)
        self.WTF_CSRF_CHECK_DEFAULT = False
        # Failed or not, each login attempt counts, per client address (Flask-Limiter; Redis
        # when configured, so every web process shares the count).
        self.ADMIN_LOGIN_RATE_LIMIT = env("ADMIN_LOGIN_RATE_LIMIT") or "5 per minute;30 per hour"
        self.RATELIMIT_STORAGE_URI = self.REDIS_URL or "memory://"
        # Redis down: count in this process instead, so admins can still log in (and see it).
        self.RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
        # Per-sender limits on inbound messages (docs/messaging.md; bot.ratelimit).
        self.SENDER_RATE_LIMIT = env("SENDER_RATE_LIMIT") or "10 per minute;100 per hour"
        self.RATELIMIT_HEADERS_ENABLED = True
        self.TRUSTED_PROXY_HOPS = _count(env, "TRUSTED_PROXY_HOPS")
        # Jobs one `flask worker` process keeps in flight (app.worker); unset or 0: 128.
        self.WORKER_CONCURRENCY = _count(env, "WORKER_CONCURRENCY") or 128
        # Of those, how many run at once between their LLM and Twilio waits (the CPU gate,
        # bot.waits); unset or 0: 2.
        self.WORKER_CPU_SLOTS = _count(env, "WORKER_CPU_SLOTS") or 2
        # How much lower than the web processes a worker runs (os.nice); 0 keeps its priority.
        self.WORKER_NICE = _count(env, "WORKER_NICE") if env("WORKER_NICE") else 10
        self._check_and_fill()

    def _check_and_fill(self) -> None:
        if self.REDIS_URL:
            # With a queue, answers go out through the REST API, so it must be able to send.
            if not self.TWILIO_ACCOUNT_SID:
                raise ConfigError(
                    "REDIS_URL sends answers through the Twilio REST API: set TWILIO_ACCOUNT_SID"
                )
            if not (self.TWILIO_SMS_FROM or self.TWILIO_WHATSAPP_FROM
                    or self.TWILIO_MESSAGING_SERVICE_SID):
                raise ConfigError(
                    "REDIS_URL sends answers through the Twilio REST API: set TWILIO_SMS_FROM, "
                    "TWILIO_WHATSAPP_FROM or TWILIO_MESSAGING_SERVICE_SID"
                )
            if not self.TWILIO_AUTH_TOKEN:
                raise ConfigError(
                    "REDIS_URL sends answers through the Twilio REST API: set TWILIO_AUTH_TOKEN"
                )
            if not self.TWILIO_MESSAGING_SERVICE_SID:
                for channel, sender in (("SMS", self.TWILIO_SMS_FROM),
                                        ("WhatsApp", self.TWILIO_WHATSAPP_FROM)):
                    if not sender:
                        log.warning("no %s sender is set: %s answers cannot be sent and are "
                                    "refunded", channel, channel)
        if self.APP_ENV == "production":
            missing = [
                name
                for name in ("SECRET_KEY", "TWILIO_AUTH_TOKEN")
                if not getattr(self, name)
            ]
            if missing:
                raise ConfigError(f"production needs {', '.join(missing)} in the environment")
            if len(self.SECRET_KEY or "") < 32:
                raise ConfigError("SECRET_KEY must be at least 32 characters in production "
                                  "(it signs admin sessions and CSRF tokens)")
            if self.TWILIO_AUTH_TOKEN == DEVELOPMENT_TWILIO_AUTH_TOKEN:
                raise ConfigError("TWILIO_AUTH_TOKEN is the development token: set the real one")
            if self.ADMIN_API_TOKEN is not None and len(self.ADMIN_API_TOKEN) < 32:
                raise ConfigError("ADMIN_API_TOKEN must be at least 32 characters")
            if self.STRIPE_SECRET_KEY and not self.STRIPE_WEBHOOK_SECRET:
                raise ConfigError("STRIPE_SECRET_KEY needs STRIPE_WEBHOOK_SECRET: Stripe's "
                                  "events must be verified")
            if self.PUBLIC_BASE_URL == DEFAULT_PUBLIC_BASE_URL:
                raise ConfigError("production needs PUBLIC_BASE_URL: the URL Twilio calls")
            return
        if not (self.APP_ENV_EXPLICIT or is_loopback_url(self.PUBLIC_BASE_URL)):
            # APP_ENV unset on a public URL: most likely a deployment that forgot a variable.
            # The development defaults (a generated SECRET_KEY, the public development Twilio
            # token, the sandbox checkout whose Pay button credits tokens for nothing) would
            # run an open system there, so refuse to start (fail closed).
            unsafe = []
            if not self.SECRET_KEY:
                unsafe.append("SECRET_KEY (or a generated one would be used)")
            if self.TWILIO_AUTH_TOKEN in (None, DEVELOPMENT_TWILIO_AUTH_TOKEN):
                unsafe.append("TWILIO_AUTH_TOKEN (or the public development token would "
                              "check webhooks)")
            if not self.STRIPE_SECRET_KEY:
                unsafe.append("STRIPE_SECRET_KEY (or the sandbox checkout would credit "
                              "tokens without payment)")
            if unsafe:
                raise ConfigError(
                    f"PUBLIC_BASE_URL {self.PUBLIC_BASE_URL} is not a loopback address and "
                    f"APP_ENV is not set: set APP_ENV=production (or development, on "
                    f"purpose), and set {'; '.join(unsafe)}")
        if not self.SECRET_KEY:
            self.SECRET_KEY = development_secret_key()
        if not self.TWILIO_AUTH_TOKEN:
            self.TWILIO_AUTH_TOKEN = DEVELOPMENT_TWILIO_AUTH_TOKEN


def development_secret_key() -> str:
    """Development without SECRET_KEY: a generated key, kept in `instance/secret_key` (mode
    0600) so that the web process and the CLI share it across restarts (admin sessions
    survive a restart, and `contacts forget` and the web hash forgotten numbers alike)."""
    path = PROJECT_ROOT / "instance" / "secret_key"
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if len(key) < 32:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
    return key


def is_loopback_url(url: str) -> bool:
    """True when `url`'s host is this machine: "localhost" (or a name under it), an address in
    127.0.0.0/8, or ::1. Such a URL is unreachable from Twilio or Stripe, so the development
    defaults are safe behind it."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _count(env: Callable[[str], str | None], name: str) -> int:
    """A whole number >= 0 from the environment (0 when unset).

    Raises:
        ConfigError: not a whole number >= 0.
    """
    raw = env(name) or "0"
    if not raw.isdigit():
        raise ConfigError(f"{name} must be a whole number >= 0, not {raw!r}")
    return int(raw)


def _seconds(
    env: Callable[[str], str | None], name: str, default: float, *, allow_zero: bool = False
) -> float:
    """A duration in seconds from the environment (a decimal number), or `default`.

    Raises:
        ConfigError: not a number, negative, or zero where zero is not allowed.
    """
    raw = env(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a positive number of seconds, not {raw!r}")
    return value
