"""The web layer: the Flask app factory, blueprints per external surface, and the CLI.

This is the only package that imports Flask.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from flask import Flask, Response

from app.config import DEVELOPMENT_TWILIO_AUTH_TOKEN, PROJECT_ROOT, Config, ConfigError
from app.extensions import configure_sqlite, csrf, db, limiter, migrate, ping_when_idle, render_item
from bot.contacts import erasure_key
from bot.llm import AnswerCache, CachedChat, ChatClient, MemoryCache, RedisCache
from bot.outbound import OutboundSettings
from bot.ratelimit import SenderLimits
from bot.router import BotSettings
from tokens.catalog import DEFAULT_LLM_TIER, Catalog, load_catalog
from tokens.errors import CatalogError
from tokens.providers import PaymentProvider, SandboxProvider, StripeProvider


def create_app(config_class: type[Config] = Config) -> Flask:
    """Build the Flask app.

    Args:
        config_class: instantiated once to read the settings (tests pass a subclass).

    Returns:
        The configured app, with the database bound, the catalog loaded and every blueprint
        and CLI command registered. Nothing connects to a server here.

    Raises:
        ConfigError: unsafe or impossible settings (see `app.config.Config`), or an economy
            catalog that does not load.
    """
    config = config_class()
    app = Flask(__name__, instance_path=str(PROJECT_ROOT / "instance"))
    app.config.from_object(config)
    _configure_logging(app)

    # The models must be imported before the metadata is used by Flask-Migrate.
    import bot.models  # noqa: F401
    import tokens.account_links  # noqa: F401
    import tokens.admin  # noqa: F401
    import tokens.affiliates  # noqa: F401
    import tokens.costs  # noqa: F401
    import tokens.ledger  # noqa: F401
    import tokens.levels  # noqa: F401
    import tokens.payment_events  # noqa: F401
    import tokens.payments  # noqa: F401

    db.init_app(app)
    migrate.init_app(
        app,
        db,
        directory=str(PROJECT_ROOT / "migrations"),
        render_as_batch=True,
        compare_type=True,
        render_item=render_item,
    )
    with app.app_context():
        configure_sqlite(db.engine)
        ping_when_idle(db.engine)
    csrf.init_app(app)
    limiter.init_app(app)
    if app.config["TRUSTED_PROXY_HOPS"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = app.config["TRUSTED_PROXY_HOPS"]
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    from app.logs import mask_bearer_paths

    mask_bearer_paths(app)
    _body_limits(app)

    try:
        catalog = load_catalog(app.config["ECONOMY_FILE"])
    except CatalogError as exc:
        raise ConfigError(f"ECONOMY_FILE: {exc}") from exc
    catalog = _with_model_override(catalog, app.config["OPENAI_MODEL"])
    try:
        sender_limits = SenderLimits.from_settings(app.config["SENDER_RATE_LIMIT"],
                                                   app.config["REDIS_URL"])
    except ValueError as exc:
        raise ConfigError(f"SENDER_RATE_LIMIT: {exc}") from exc
    provider = _payment_provider(app)
    app.extensions["payment_provider"] = provider
    from app.billing import run_top_up

    app.extensions["bot_settings"] = BotSettings(
        catalog=catalog, public_base_url=app.config["PUBLIC_BASE_URL"],
        chat=_chat_client(app, catalog), sender_limits=sender_limits,
        erased_key=erasure_key(app.config["SECRET_KEY"]),
        payments=provider, top_up=functools.partial(run_top_up, app),
    )
    app.extensions["outbound"] = OutboundSettings(
        status_callback_url=app.config["PUBLIC_BASE_URL"] + "/webhooks/twilio/status",
        whatsapp_template_sid=app.config["TWILIO_WHATSAPP_TEMPLATE_SID"],
        backoff_seconds=app.config["TWILIO_RETRY_BACKOFF_SECONDS"],
    )
    if app.config["TWILIO_AUTH_TOKEN"] == DEVELOPMENT_TWILIO_AUTH_TOKEN:
        app.logger.warning(
            "TWILIO_AUTH_TOKEN is not set: webhooks are checked with the development token"
        )


    from app.account import bp as account_bp
    from app.admin import api_bp as admin_api_bp
    from app.admin import pages_bp as admin_pages_bp
    from app.affiliates import bp as affiliates_bp
    from app.cli import register_cli
    from app.health import bp as health_bp
    from app.metrics import bp as metrics_bp
    from app.metrics import watch_rows
    from app.pay import bp as pay_bp
    from app.sandbox import bp as sandbox_bp
    from app.stripe import bp as stripe_bp
    from app.twilio import bp as twilio_bp

    app.register_blueprint(twilio_bp)
    app.register_blueprint(pay_bp)
    app.register_blueprint(account_bp)
    app.register_blueprint(sandbox_bp)
    app.register_blueprint(stripe_bp)
    app.register_blueprint(affiliates_bp)
    app.register_blueprint(admin_api_bp)
    app.register_blueprint(admin_pages_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(metrics_bp)
    watch_rows()
    register_cli(app)
    _security_headers(app)
    _database_errors(app)
    return app


# The largest request body each surface takes, bytes, by blueprint (docs/SECURITY.md, "Request
# bodies"). Twilio: a message body is at most 1,600 characters (4 bytes each in UTF-8, tripled by
# percent-encoding: about 19 KB) plus at most 10 media URLs and some 40 short fields, so 64 KiB
# leaves ample headroom. Stripe: an event is one API object; Stripe caps metadata at 50 keys of
# 500 characters and includes at most 10 items of a list, and real events are a few KB to some
# tens of KB, so 1 MiB is far above any real one. Affiliate postbacks keep their own 16 KiB
# check; admin forms and everything else are small forms.
BODY_LIMITS = {"twilio": 64 * 1024, "stripe": 1024 * 1024}
DEFAULT_BODY_LIMIT = 16 * 1024


def _body_limits(app: Flask) -> None:
    """Refuse a request body over its surface's limit (`BODY_LIMITS`) with 413 and a reason,
    before any of it is read: by its Content-Length before the view runs (so an unsigned
    100 MB POST costs no memory), and, for a body without a length (chunked), when reading
    passes the limit (Werkzeug's `max_content_length`)."""
    from flask import request
    from werkzeug.exceptions import RequestEntityTooLarge

    app.config["MAX_CONTENT_LENGTH"] = max(BODY_LIMITS.values())

    @app.before_request
    def _limit() -> Response | None:
        limit = BODY_LIMITS.get(request.blueprint or "", DEFAULT_BODY_LIMIT)
        request.max_content_length = limit
        if (request.content_length or 0) > limit:
            return _too_large(limit)
        return None

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large_error(_exc: RequestEntityTooLarge) -> Response:
        return _too_large(request.max_content_length or DEFAULT_BODY_LIMIT)

    def _too_large(limit: int) -> Response:
        response = Response(f"request body too large: at most {limit} bytes here\n",
                            status=413, content_type="text/plain; charset=utf-8")
        # the unread body must not be taken as the next request on a kept-alive connection
        response.headers["Connection"] = "close"
        return response


def _database_errors(app: Flask) -> None:
    """The database cannot be reached (or SQLite stayed locked): 503 with Retry-After, so
    Twilio and Stripe deliver the webhook again later. The transaction was rolled back whole,
    so nothing is half written, and a retry is deduped by its MessageSid or event id."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _unavailable(exc: Exception) -> Response:
        try:
            db.session.rollback()
        except (OperationalError, InterfaceError):
            db.session.invalidate()
        orig = getattr(exc, "orig", None)
        # The driver's message says which it is (down, deadlock, a missing table after a
        # skipped migration); the engine hides statement parameters, so no personal data.
        app.logger.error("database unavailable: answered 503",
                         extra={"error": type(orig or exc).__name__,
                                "detail": str(orig or exc)[:300]})
        return Response("The database is unavailable; try again shortly.\n", status=503,
                        headers={"Retry-After": "30"}, content_type="text/plain; charset=utf-8")


# Every response: no MIME sniffing, no framing, no referrer (pay-link pages carry a token in
# their URL, which must not leak to Stripe or anyone linked from them), and HTTPS remembered in
# production. HTML pages also get a CSP; the admin blueprint sets a stricter one of its own.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
PAGE_CSP = ("default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self' https:")


def _security_headers(app: Flask) -> None:
    production = app.config["APP_ENV"] == "production"

    @app.after_request
    def _headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        if production:
            response.headers.setdefault("Strict-Transport-Security",
                                        "max-age=31536000; includeSubDomains")
        return response


def _payment_provider(app: Flask) -> PaymentProvider | None:
    """Stripe when `STRIPE_SECRET_KEY` is set; else the sandbox, except in production, where
    pay links then say that payments are not enabled (docs/payments.md: the sandbox is refused in
    production)."""
    config = app.config
    if config["STRIPE_SECRET_KEY"]:
        return StripeProvider(config["STRIPE_SECRET_KEY"], config["STRIPE_WEBHOOK_SECRET"],
                              api_base=config["STRIPE_API_BASE"])
    if config["APP_ENV"] == "production":
        # Never the sandbox in production: its Pay button credits tokens without money.
        app.logger.warning("STRIPE_SECRET_KEY is not set: payments are off")
        return None
    return SandboxProvider(config["PUBLIC_BASE_URL"])


def _with_model_override(catalog: Catalog, model: str | None) -> Catalog:
    """`OPENAI_MODEL` replaces the normal LLM tier's model; it must have a price in the catalog,
    or its cost could not be recorded."""
    if not model:
        return catalog
    if model not in catalog.costs.llm_models:
        raise ConfigError(
            f"OPENAI_MODEL {model!r} has no price in the catalog's costs.llm_models "
            f"(known: {', '.join(sorted(catalog.costs.llm_models))})"
        )
    tiers = dict(catalog.llm.tiers)
    tiers[DEFAULT_LLM_TIER] = replace(tiers[DEFAULT_LLM_TIER], model=model)
    return replace(catalog, llm=replace(catalog.llm, tiers=tiers))


def _chat_client(app: Flask, catalog: Catalog) -> ChatClient | None:
    """The LLM client when `OPENAI_API_KEY` is set, behind the answer cache (Redis when
    configured, else in-process)."""
    key = app.config["OPENAI_API_KEY"]
    if not key:
        return None
    from app.metrics import MeteredOpenAIChat
    from app.queue import redis_connection

    connection = redis_connection(app)
    # No library retries: one answer is one call, so its cost stays within the ceiling the
    # level policy counted (tokens.levels.llm_ceiling_musd); a failed call falls back offline.
    client = MeteredOpenAIChat(
        key, base_url=app.config["OPENAI_BASE_URL"],
        timeout_seconds=app.config["OPENAI_TIMEOUT_SECONDS"], max_retries=0,
    )
    cache: AnswerCache = RedisCache(connection) if connection is not None else MemoryCache()
    return CachedChat(client, cache, catalog.llm.cache_ttl_seconds)


def _configure_logging(app: Flask) -> None:
    """Structured logs with request ids (`app.logs`); the test suite keeps pytest's capture."""
    import logging

    from app.logs import bind_request_ids, configure

    if app.config["APP_ENV"] != "test":
        configure(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])
    # The Twilio library logs every REST request's URL and headers at INFO (11 lines per
    # answer in the worker's profile): noise at best, and not ours to vet for privacy.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
    bind_request_ids(app)
