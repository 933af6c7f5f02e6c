"""Fixtures of the bot's tests: the app with the OpenAI stand-in as its LLM, and the OpenAI
client on a stand-in of the module's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from bot.llm import OpenAIChat
from testing.openai_standin import OpenAIStandIn


@pytest.fixture
def llm_app(make_app: Callable[..., Flask], openai_api: OpenAIStandIn) -> Flask:
    """The app (no Redis) whose LLM is the OpenAI stand-in, with a timeout no loaded machine
    reaches; inside an app context."""
    return make_app(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=openai_api.base_url,
                    OPENAI_TIMEOUT_SECONDS="10")


@pytest.fixture(scope="module")
def running_standin() -> Iterator[OpenAIStandIn]:
    """The OpenAI stand-in, one per test module."""
    with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def standin(running_standin: OpenAIStandIn) -> OpenAIStandIn:
    """The module's OpenAI stand-in, reset (its default reply, no requests, no failures)."""
    running_standin.reset()
    return running_standin


@pytest.fixture
def chat(standin: OpenAIStandIn) -> OpenAIChat:
    """The OpenAI client (`bot.llm.OpenAIChat`) on the reset stand-in."""
    return OpenAIChat("sk-test", base_url=standin.base_url, timeout_seconds=5.0)
