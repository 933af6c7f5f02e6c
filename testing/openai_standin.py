"""A local stand-in for the OpenAI Chat Completions API, on a free loopback port.

The real `openai` client talks to it unchanged::

    with OpenAIStandIn() as standin:
        client = openai.OpenAI(api_key="x", base_url=standin.base_url, max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[...])

It serves `POST /v1/chat/completions` with a `chat.completion` object shaped like OpenAI's,
deterministic content and token counts, and OpenAI-style error bodies. Tests steer it through
`reply`, `script()` (replies given in order, e.g. a violating answer and then a clean one),
`responder` (a function of the request body, for replies that depend on the prompt),
`fail_next()`, `delay_seconds`, and read back `requests`, `bodies` and `max_concurrent`.
Everything is thread-safe: the server answers each request on its own thread.
"""

from __future__ import annotations

import math
import secrets
import string
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from testing.loopback import HOST as HOST
from testing.loopback import FailureQueue, LoopbackServer, json_response

API_PREFIX = "/v1"
CHAT_COMPLETIONS = f"{API_PREFIX}/chat/completions"
DEFAULT_REPLY_PREFIX = "Here is your answer about: "
SYSTEM_FINGERPRINT = "fp_standin0001"
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
_ID_ALPHABET = string.ascii_letters + string.digits

# (type, code, message) of OpenAI's error bodies, by HTTP status.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for gpt-4o-mini in organization org-standin on requests per min "
        "(RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_INSUFFICIENT_QUOTA = (
    "insufficient_quota",
    "insufficient_quota",
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
)


def error_body(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An OpenAI error body: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def estimate_tokens(text: str) -> int:
    """The stand-in's token estimate for `text`: one token per four characters, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def content_text(content: Any) -> str:
    """The text of a message `content`: a string, or a list of parts (`{"type": "text", ...}`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def system_text(body: dict[str, Any]) -> str:
    """The system prompt of a chat-completion request body ("" without one)."""
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "system":
            return content_text(message.get("content"))
    return ""


def last_user_text(body: dict[str, Any]) -> str:
    """The last user message of a chat-completion request body ("" without one)."""
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


# A function of the request body giving the assistant's content, or None to fall through.
Responder = Callable[[dict[str, Any]], str | None]


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Deterministic prompt size: ceil(characters of all contents / 4) + 4 per message."""
    characters = sum(len(content_text(message.get("content"))) for message in messages)
    return math.ceil(characters / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)


@dataclass
class _Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class OpenAIStandIn(LoopbackServer):
    """A threaded loopback server answering the Chat Completions API like OpenAI does.

    Use as a context manager (or call `start()` / `stop()`); `base_url` is valid once started.

    The content of an answer is, in this order: the next scripted reply (`script()`), else
    what `responder` returns for the request body (None falls through), else `reply`, else
    "Here is your answer about: <last user text>".

    Attributes:
        reply: fixed assistant content, or None for the default above.
        responder: a function of the request body giving the content, or None.
        delay_seconds: sleep this long before answering any request (to provoke client timeouts).
    """

    thread_name = "openai-standin"
    # base_url is `http://127.0.0.1:PORT/v1`, for `openai.OpenAI(base_url=...)`.
    base_path = API_PREFIX

    def __init__(self, reply: str | None = None, delay_seconds: float = 0.0) -> None:
        super().__init__(delay_seconds)
        self._reply = reply
        self._responder: Responder | None = None
        self._script: deque[str] = deque()
        self._failures: FailureQueue[_Failure] = FailureQueue()
        self._requests: list[dict[str, Any]] = []
        self._in_flight = 0
        self._max_concurrent = 0

    # -- controls --------------------------------------------------------------------------

    @property
    def reply(self) -> str | None:
        with self._lock:
            return self._reply

    @reply.setter
    def reply(self, value: str | None) -> None:
        with self._lock:
            self._reply = value

    @property
    def responder(self) -> Responder | None:
        with self._lock:
            return self._responder

    @responder.setter
    def responder(self, value: Responder | None) -> None:
        with self._lock:
            self._responder = value

    def script(self, *replies: str) -> None:
        """Answer the next successful requests with `replies`, one each, in order (after any
        replies scripted before); then back to `responder` / `reply`. A queued failure
        (`fail_next`) answers first and does not use up a scripted reply."""
        with self._lock:
            self._script.extend(replies)

    @property
    def scripted(self) -> int:
        """How many scripted replies are still waiting."""
        with self._lock:
            return len(self._script)

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        code: str | None = None,
        message: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next `times` authenticated requests with an OpenAI error.

        The body is `{"error": {"message", "type", "param": null, "code"}}` as OpenAI sends:
        429 -> type "requests", code "rate_limit_exceeded" (pass `code="insufficient_quota"`
        for the quota error, whose type is "insufficient_quota" too); 500/502/503 -> type
        "server_error", code null; others -> type "invalid_request_error".

        Args:
            status: the HTTP status.
            times: how many consecutive requests fail.
            code, message, error_type: override the defaults above.
            retry_after: add `retry-after-ms` / `retry-after` headers (seconds).
        """
        default_type, default_code, default_message = _ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
        )
        if code == "insufficient_quota":
            default_type, default_code, default_message = _INSUFFICIENT_QUOTA
        body = error_body(
            message if message is not None else default_message,
            error_type if error_type is not None else default_type,
            code if code is not None else default_code,
        )
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["retry-after-ms"] = str(int(retry_after * 1000))
            headers["retry-after"] = str(math.ceil(retry_after))
        self._failures.push(_Failure(status, body, headers), times)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of every request received, oldest first.

        Each is `{"method", "path", "headers": {lower-case name: value}, "json": body or None}`.
        """
        with self._lock:
            return list(self._requests)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat-completion requests received, oldest first."""
        return [
            request["json"]
            for request in self.requests
            if request["path"] == CHAT_COMPLETIONS and isinstance(request["json"], dict)
        ]

    @property
    def max_concurrent(self) -> int:
        """The highest number of requests that were being handled at the same time."""
        with self._lock:
            return self._max_concurrent

    def reset(self) -> None:
        """Forget requests and pending failures; back to the default reply and no delay."""
        self._supersede_delayed()
        self._failures.clear()
        with self._lock:
            self._reply = None
            self._responder = None
            self._script.clear()
            self._delay_seconds = 0.0
            self._requests.clear()
            self._max_concurrent = self._in_flight

    # -- the server ------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self._in_flight += 1
            self._max_concurrent = max(self._max_concurrent, self._in_flight)
        try:
            return self._answer(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, request: Request) -> Response:
        body = request.get_json(silent=True)
        with self._lock:
            self._requests.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "headers": {name.lower(): value for name, value in request.headers.items()},
                    "json": body,
                }
            )
        self._pause()

        if request.method != "POST" or request.path != CHAT_COMPLETIONS:
            message = f"Invalid URL ({request.method} {request.path})"
            return _json(404, error_body(message, "invalid_request_error"))

        authorization = request.headers.get("Authorization", "")
        if not authorization.startswith("Bearer ") or not authorization[7:].strip():
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return _json(401, error_body(message, "invalid_request_error"))

        failure = self._failures.take()
        if failure is not None:
            return _json(failure.status, failure.body, failure.headers)

        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            return _json(400, error_body(message, "invalid_request_error"))
        return self._complete(body)

    def _complete(self, body: dict[str, Any]) -> Response:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            message = "you must provide a model parameter"
            return _json(400, error_body(message, "invalid_request_error"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _json(
                400,
                error_body(
                    "Missing required parameter: 'messages'.",
                    "invalid_request_error",
                    code="missing_required_parameter",
                    param="messages",
                ),
            )
        if body.get("stream"):
            return _json(400, error_body("The stand-in does not stream.", "invalid_request_error"))
        messages = [message for message in messages if isinstance(message, dict)]

        content = self._content({**body, "messages": messages})

        completion_tokens = estimate_tokens(content)
        finish_reason = "stop"
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < completion_tokens:
            content = content[: max(limit, 0) * CHARS_PER_TOKEN]
            completion_tokens = max(limit, 0)
            finish_reason = "length"

        prompt = prompt_tokens(messages)
        completion = {
            "id": "chatcmpl-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(29)),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        return _json(200, completion)

    def _content(self, body: dict[str, Any]) -> str:
        """The assistant's content for `body`: scripted, else the responder's, else `reply`,
        else the default."""
        with self._lock:
            if self._script:
                return self._script.popleft()
            responder, reply = self._responder, self._reply
        # The responder runs outside the lock: it is the test's code, and may be slow.
        content = responder(body) if responder is not None else None
        if content is None:
            content = reply
        if content is None:
            content = DEFAULT_REPLY_PREFIX + last_user_text(body)
        return content


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """`json_response` with OpenAI's request-id, processing-time and version headers."""
    standard = {
        "x-request-id": f"req_{secrets.token_hex(16)}",
        "openai-processing-ms": "1",
        "openai-version": "2020-10-01",
    }
    return json_response(status, payload, {**standard, **(headers or {})})
