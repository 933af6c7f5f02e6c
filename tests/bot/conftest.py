"""Fixtures of the bot's tests: the app with the OpenAI stand-in as its LLM."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from testing.openai_standin import OpenAIStandIn


@pytest.fixture
def llm_app(make_app: Callable[..., Flask], openai_api: OpenAIStandIn) -> Flask:
    """The app (no Redis) whose LLM is the OpenAI stand-in, with a timeout no loaded machine
    reaches; inside an app context."""
    return make_app(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=openai_api.base_url,
                    OPENAI_TIMEOUT_SECONDS="10")
