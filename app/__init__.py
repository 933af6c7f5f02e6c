"""The web layer: the Flask app factory, blueprints per external surface, and the CLI.

This is the only package that imports Flask.
"""

from __future__ import annotations

import logging

from flask import Flask

from app.config import DEVELOPMENT_TWILIO_AUTH_TOKEN, PROJECT_ROOT, Config, ConfigError
from app.extensions import configure_sqlite, db, migrate, render_item
from bot.router import BotSettings
from tokens.catalog import load_catalog
from tokens.errors import CatalogError


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
    import tokens.ledger  # noqa: F401
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

    try:
        catalog = load_catalog(app.config["ECONOMY_FILE"])
    except CatalogError as exc:
        raise ConfigError(f"ECONOMY_FILE: {exc}") from exc
    app.extensions["bot_settings"] = BotSettings(
        catalog=catalog, public_base_url=app.config["PUBLIC_BASE_URL"]
    )
    if app.config["TWILIO_AUTH_TOKEN"] == DEVELOPMENT_TWILIO_AUTH_TOKEN:
        app.logger.warning(
            "TWILIO_AUTH_TOKEN is not set: webhooks are checked with the development token"
        )

    from app.cli import register_cli
    from app.health import bp as health_bp
    from app.pay import bp as pay_bp
    from app.twilio import bp as twilio_bp

    app.register_blueprint(twilio_bp)
    app.register_blueprint(pay_bp)
    app.register_blueprint(health_bp)
    register_cli(app)
    return app


def _configure_logging(app: Flask) -> None:
    if app.config["APP_ENV"] != "test" and not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
