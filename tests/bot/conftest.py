"""Fixtures of the bot's tests: the app with the OpenAI stand-in as its LLM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from app import create_app
from app.extensions import db
from tests.conftest import config_for
from tests.support.openai_standin import OpenAIStandIn


@pytest.fixture
def llm_app(database_url: str, openai_api: OpenAIStandIn) -> Iterator[Flask]:
    """The app (no Redis) whose LLM is the OpenAI stand-in, with a timeout no loaded machine
    reaches; inside an app context."""
    application = create_app(config_for(database_url, OPENAI_API_KEY="sk-test",
                                         OPENAI_BASE_URL=openai_api.base_url,
                                         OPENAI_TIMEOUT_SECONDS="10"))
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()
