"""The test doubles in `tests.support` work with the real client libraries.

A real `redis-server`, and loopback stand-ins for OpenAI's Chat Completions API and Twilio's
Messages resource, driven through `redis`, `openai` and `twilio` exactly as the bot uses them.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client as TwilioClient

from bot.channels.twilio import BaseUrlHttpClient
from testing.openai_standin import OpenAIStandIn, last_user_text, system_text
from testing.redis_server import RedisServer, redis_server
from testing.twilio_standin import TwilioStandIn

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "standin-auth-token"
# Requests meant to succeed get a timeout no loaded machine reaches; the timeout tests
# shorten it to SHORT_TIMEOUT against a SLOW stand-in.
TIMEOUT = 10.0
SHORT_TIMEOUT = 0.3
SLOW = 1.0


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture()
def openai_standin() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture()
def llm(openai_standin: OpenAIStandIn) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test", base_url=openai_standin.base_url, timeout=TIMEOUT, max_retries=0
    )


@pytest.fixture()
def twilio_standin() -> Iterator[TwilioStandIn]:
    with TwilioStandIn(ACCOUNT_SID, AUTH_TOKEN) as standin:
        yield standin


@pytest.fixture()
def twilio(twilio_standin: TwilioStandIn) -> TwilioClient:
    http_client = BaseUrlHttpClient(twilio_standin.base_url, timeout=TIMEOUT)
    return TwilioClient(ACCOUNT_SID, AUTH_TOKEN, http_client=http_client)


def ask(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are a nutrition assistant."},
            {"role": "user", "content": text},
        ],
        **kwargs,
    )


# -- redis ----------------------------------------------------------------------------------


def test_redis_server_answers_ping_and_stores_values(redis_srv: RedisServer) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    try:
        assert client.ping() is True
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        assert redis_srv.url == f"redis://{redis_srv.host}:{redis_srv.port}/0"
    finally:
        client.close()


# -- openai ---------------------------------------------------------------------------------


def test_openai_completion_looks_like_openai(
    llm: openai.OpenAI, openai_standin: OpenAIStandIn
) -> None:
    completion = ask(llm, "What is a carb?", max_tokens=50)

    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.system_fingerprint
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Here is your answer about: What is a carb?"
    usage = completion.usage
    assert usage is not None
    # ceil(len("You are a nutrition assistant." + "What is a carb?") / 4) + 2 * 4
    assert usage.prompt_tokens == 12 + 8
    assert usage.completion_tokens == 11  # ceil(42 / 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0

    (request,) = openai_standin.requests
    assert request["headers"]["authorization"] == "Bearer sk-test"
    assert request["json"]["max_tokens"] == 50
    assert openai_standin.bodies[0]["messages"][1]["content"] == "What is a carb?"


def test_openai_scripted_replies_come_in_order_then_the_default(
    llm: openai.OpenAI, openai_standin: OpenAIStandIn
) -> None:
    openai_standin.script("first", "second")
    openai_standin.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        ask(llm, "a")  # a failure does not use up a scripted reply
    assert openai_standin.scripted == 2
    assert [ask(llm, text).choices[0].message.content for text in ("b", "c", "d")] == [
        "first", "second", "Here is your answer about: d",
    ]
    assert openai_standin.scripted == 0


def test_openai_responder_answers_from_the_request_and_may_fall_through(
    llm: openai.OpenAI, openai_standin: OpenAIStandIn
) -> None:
    seen: list[str] = []

    def respond(body: dict[str, Any]) -> str | None:
        seen.append(system_text(body))
        text = last_user_text(body)
        return None if text == "pass" else text.upper()

    openai_standin.responder = respond
    openai_standin.reply = "fixed"
    assert ask(llm, "loud").choices[0].message.content == "LOUD"
    assert ask(llm, "pass").choices[0].message.content == "fixed"
    openai_standin.script("scripted")  # a scripted reply comes before the responder
    assert ask(llm, "loud").choices[0].message.content == "scripted"
    assert seen == ["You are a nutrition assistant."] * 2
    completion = ask(llm, "loud")
    assert completion.usage is not None and completion.usage.completion_tokens == 1
    openai_standin.reset()
    assert openai_standin.responder is None and openai_standin.scripted == 0
    assert ask(llm, "x").choices[0].message.content == "Here is your answer about: x"


def test_openai_reply_is_truncated_at_max_tokens(
    llm: openai.OpenAI, openai_standin: OpenAIStandIn
) -> None:
    openai_standin.reply = "x" * 100
    completion = ask(llm, "Tell me everything.", max_completion_tokens=5)

    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "x" * 20
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


def test_openai_errors_map_to_the_client_exceptions(
    llm: openai.OpenAI, openai_standin: OpenAIStandIn
) -> None:
    openai_standin.fail_next(500)
    with pytest.raises(openai.InternalServerError) as server_error:
        ask(llm, "hi")
    assert server_error.value.status_code == 500
    assert server_error.value.type == "server_error"

    openai_standin.fail_next(429, times=2)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as rate_limited:
            ask(llm, "hi")
        assert rate_limited.value.code == "rate_limit_exceeded"

    openai_standin.fail_next(429, code="insufficient_quota")
    with pytest.raises(openai.RateLimitError) as no_quota:
        ask(llm, "hi")
    assert no_quota.value.code == "insufficient_quota"
    assert no_quota.value.type == "insufficient_quota"

    assert ask(llm, "hi").choices[0].finish_reason == "stop"
    assert len(openai_standin.requests) == 5


def test_openai_slow_answer_times_out(llm: openai.OpenAI, openai_standin: OpenAIStandIn) -> None:
    openai_standin.delay_seconds = SLOW
    with pytest.raises(openai.APITimeoutError):
        ask(llm.with_options(timeout=SHORT_TIMEOUT), "hi")


def test_openai_requires_a_bearer_key(openai_standin: OpenAIStandIn) -> None:
    request = urllib.request.Request(
        openai_standin.base_url + "/chat/completions",
        data=json.dumps({"model": "gpt-4o-mini", "messages": []}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=2)
    assert refused.value.code == 401
    assert json.load(refused.value)["error"]["type"] == "invalid_request_error"


def test_openai_counts_concurrent_requests(
    llm: openai.OpenAI, openai_standin: OpenAIStandIn
) -> None:
    # The requests sleep until the reset below ends them, so a slow thread cannot miss the
    # overlap on a loaded machine.
    openai_standin.delay_seconds = 30.0
    patient = llm.with_options(timeout=60.0)
    ended: list[BaseException] = []

    def ask_until_reset(text: str) -> None:
        try:
            ask(patient, text)
        except openai.InternalServerError as error:  # the 503 of a superseded request
            ended.append(error)

    threads = [threading.Thread(target=ask_until_reset, args=(f"question {i}",))
               for i in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(openai_standin.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert openai_standin.max_concurrent == 3
    openai_standin.reset()
    for thread in threads:
        thread.join(timeout=10)
    assert len(ended) == 3
    openai_standin.reset()  # with nothing in flight now, the count starts again from 0
    assert openai_standin.max_concurrent == 0
    assert openai_standin.requests == []


def test_a_request_still_sleeping_at_reset_leaves_the_next_tests_failures_alone(
    llm: openai.OpenAI, openai_standin: OpenAIStandIn
) -> None:
    """The CI flake of `test_library_retries_are_used_when_asked`: a timed-out request from the
    test before woke after the reset and took one of the failures queued for the next test."""
    openai_standin.delay_seconds = 30.0
    late = threading.Thread(target=ask, args=(llm.with_options(timeout=60.0), "late"))
    late.start()
    deadline = time.monotonic() + 30
    while not openai_standin.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    openai_standin.reset()
    openai_standin.fail_next(503, times=2)
    late.join(timeout=5)
    assert not late.is_alive()
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(llm, "now")
    assert ask(llm, "now").choices[0].message.content


# -- twilio ---------------------------------------------------------------------------------


def test_twilio_message_is_created_and_recorded(
    twilio: TwilioClient, twilio_standin: TwilioStandIn
) -> None:
    message = twilio.messages.create(
        to="+15551230001",
        from_="+15559870002",
        body="Your balance is 120 tokens.",
        status_callback="https://bot.example.com/webhooks/twilio/status",
    )

    assert message.sid is not None and message.sid.startswith("SM") and len(message.sid) == 34
    assert message.status == "queued"
    assert message.direction == "outbound-api"
    assert message.num_segments == "1"
    assert message.date_created is not None
    assert message.error_code is None
    (sent,) = twilio_standin.sent
    assert sent == {
        "account_sid": ACCOUNT_SID,
        "To": "+15551230001",
        "From": "+15559870002",
        "Body": "Your balance is 120 tokens.",
        "StatusCallback": "https://bot.example.com/webhooks/twilio/status",
        "sid": message.sid,
        "response_status": 201,
    }
    assert twilio.messages(message.sid).fetch().body == "Your balance is 120 tokens."


def test_twilio_errors_carry_status_and_code(
    twilio: TwilioClient, twilio_standin: TwilioStandIn
) -> None:
    twilio_standin.fail_next(400, 21610)
    with pytest.raises(TwilioRestException) as unsubscribed:
        twilio.messages.create(to="+15551230001", from_="+15559870002", body="hi")
    assert unsubscribed.value.status == 400
    assert unsubscribed.value.code == 21610
    assert "unsubscribed recipient" in unsubscribed.value.msg

    twilio_standin.fail_next(429, 20429)
    with pytest.raises(TwilioRestException) as throttled:
        twilio.messages.create(to="+15551230001", from_="+15559870002", body="hi")
    assert (throttled.value.status, throttled.value.code) == (429, 20429)

    assert [entry["response_status"] for entry in twilio_standin.sent] == [400, 429]
    assert twilio_standin.accepted == []


def test_twilio_rejects_wrong_credentials(twilio_standin: TwilioStandIn) -> None:
    client = TwilioClient(
        ACCOUNT_SID, "wrong-token", http_client=BaseUrlHttpClient(twilio_standin.base_url)
    )
    with pytest.raises(TwilioRestException) as refused:
        client.messages.create(to="+15551230001", from_="+15559870002", body="hi")
    assert (refused.value.status, refused.value.code) == (401, 20003)
    assert twilio_standin.sent == []


def test_twilio_slow_answer_raises_read_timeout(twilio_standin: TwilioStandIn) -> None:
    twilio_standin.delay_seconds = SLOW
    http_client = BaseUrlHttpClient(twilio_standin.base_url, timeout=SHORT_TIMEOUT)
    impatient = TwilioClient(ACCOUNT_SID, AUTH_TOKEN, http_client=http_client)
    with pytest.raises(requests.exceptions.ReadTimeout):
        impatient.messages.create(to="+15551230001", from_="+15559870002", body="hi")
