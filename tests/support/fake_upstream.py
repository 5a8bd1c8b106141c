"""A fake OpenAI-compatible upstream server for the proxy's end-to-end tests.

It runs as its own process (aiohttp.web on one asyncio loop, uvloop when importable)::

    python -m tests.support.fake_upstream --port 0 [--host 127.0.0.1] [--require-key KEY]
                                          [--chunks 8]
    python tests/support/fake_upstream.py --port 0

Once the socket is bound it prints exactly one line, ``LISTENING <port>``, to stdout and
flushes it; nothing else is ever written to stdout.  SIGTERM and SIGINT shut it down cleanly
(exit status 0).

Routes (OpenAI wire format, as the official ``openai`` SDK expects it):

* ``POST /v1/chat/completions``: ``chat.completion`` or, with ``"stream": true``, an SSE
  stream of ``chat.completion.chunk`` events ending in ``data: [DONE]``.  ``n`` must be 1.
* ``POST /v1/completions``: legacy ``text_completion`` (one choice per prompt), streamed too.
* ``POST /v1/embeddings``: ``input`` as a string, list of strings, token list or list of token
  lists; ``encoding_format`` ``"float"`` (default) or ``"base64"`` (little-endian float32);
  ``dimensions``.  Vectors are unit length and depend only on the input item.
* ``GET /v1/models`` and ``GET /v1/models/{model}``.
* Anthropic: ``POST /v1/messages`` answers in the Messages API's shapes (``message`` JSON, or
  with ``"stream": true`` the SSE events ``message_start``, ``ping``,
  ``content_block_start``/``_delta``/``_stop``, ``message_delta``, ``message_stop``, each
  framed ``event: <type>`` + ``data: <json>``).  It requires an ``anthropic-version`` header
  and, with ``--require-key``, ``x-api-key`` (or a Bearer token, as anthropic SDK 2.x sends
  the key); errors are Anthropic-shaped
  (``{"type": "error", "error": {"type", "message"}}``).  ``model``, ``max_tokens`` and a
  non-empty ``messages`` are required, roles must alternate and each ``tool_result`` must
  answer a ``tool_use`` of the previous message.  The answer holds a ``thinking`` block
  (with ``thinking_delta``s and a ``signature_delta``) when the request has ``thinking``,
  and a ``tool_use`` block (arguments streamed as ``input_json_delta``s) when the request
  has ``tools`` and either forces one (``tool_choice`` ``tool``/``any``: no text then) or
  the model name contains ``tool`` (first tool, after a short text).  The input has one
  sample value per schema property.  Usage counts like chat (input from the text of
  ``system`` and all messages; output = thinking + text pieces + 3 for a tool call); a
  reply longer than ``max_tokens`` pieces is cut with ``stop_reason: max_tokens``.
* Azure: ``POST /openai/deployments/{deployment}/{chat/completions,completions,embeddings}``
  requires an ``api-key`` header and an ``api-version`` query parameter (Azure-style 401/400
  error otherwise); the deployment name plays the part of the model.

Deterministic accounting:

* prompt_tokens: for chat, ``(total characters of the text in all message contents) // 4 + 1``
  (string contents and the ``text`` of list-style content parts count).  For legacy
  completions and embeddings every string input counts ``len(text) // 4 + 1`` and every token
  array counts its length; several inputs add up.
* The reply text is ``"Hello from the fake upstream: "`` followed by N words (alpha, bravo,
  ...), sent as N pieces: the prefix plus the first word, then ``" <word>"`` each.  N is
  ``--chunks`` (default 8) unless the model asks otherwise.
* completion_tokens is the number of content pieces (per prompt for legacy completions).

Scripted faults are chosen by the model name (on Azure routes by the deployment name).  A
fault name matches exactly or followed by free text starting with a separator for the word
faults (``echo-case1``) or a non-digit for the numeric ones (``error-503-alias``), so tests
can keep model names unique:

* ``error-<status>``: that HTTP status (400..599) with an OpenAI error body; 429 adds
  ``retry-after: 1`` and ``x-ratelimit-*`` headers.
* ``hang``: never answers (sleeps an hour without blocking anything else).
* ``slowfirst-<ms>``: waits <ms> before the first byte (stream or not).
* ``slow-<ms>``: <ms> between SSE events; a non-stream answer waits <ms> once.
* ``garbage``: 200, ``content-type: application/json``, a body that is not JSON.
* ``reset``: aborts the TCP connection without any response.
* ``cut-<n>``: a stream sends <n> content chunks and then aborts the connection (no [DONE]);
  a non-stream answer sends half of its body and aborts.
* ``nousage``: streams never carry the usage chunk; non-stream answers omit ``usage``.
* ``echo``: the reply text is the exact request body the fake received.
* ``long-<n>``: the reply has <n> content pieces.
* ``midstream-error`` (``/v1/messages`` streams): half-way through the text an Anthropic
  ``error`` event (``overloaded_error``) and a clean end of the stream.
* ``unknown-event`` (``/v1/messages`` streams): made-up event types among the real ones.
* ``context-overflow``: 400 ``context_length_exceeded``, as OpenAI answers a prompt longer
  than the model's context window.
* ``content-policy``: 400 ``content_policy_violation``, as OpenAI (Azure:
  ``content_filter``) answers a prompt its safety system rejects.

On ``/v1/messages``, ``error-<status>`` answers with Anthropic's error type for the status
(e.g. 529 ``overloaded_error``; 429 and 529 add ``retry-after: 1``); ``nousage`` has no
effect there (Anthropic always reports usage).

``echo`` and ``long-<n>`` shape reply text, so on ``/embeddings`` they answer normally.

Observability: ``GET /_stats`` returns the counters below as JSON, ``POST /_reset`` zeroes them
(``inflight`` is a live gauge and is kept).  Control routes (``/_*``) are not counted.

* ``requests``, ``by_path`` (path -> count), ``by_model`` (model/deployment -> count)
* ``streams_started``, ``streams_completed`` (``[DONE]`` sent), ``streams_cancelled`` (the
  client went away before the end), ``streams_aborted`` (``cut-<n>`` ended it on purpose)
* ``requests_cancelled`` (any request whose handler was cancelled by a client disconnect,
  e.g. a ``hang`` the client gave up on), ``inflight``
* ``last_path``, ``last_query``, ``last_headers`` (lowercased names), ``last_body`` (parsed
  JSON; the raw text when it is not JSON; null when empty)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import math
import random
import re
import signal
import struct
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

SYSTEM_FINGERPRINT: Final = "fp_fake"
REPLY_PREFIX: Final = "Hello from the fake upstream: "
DEFAULT_CHUNKS: Final = 8
HANG_SECONDS: Final = 3600.0
MODEL_CREATED: Final = 1_700_000_000
MODEL_IDS: Final = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "fake-model",
)
_WORDS: Final = (
    *("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"),
    *("juliett", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"),
    *("sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu"),
)
_JSON_PARSE_MESSAGE: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)

log = logging.getLogger("fake_upstream")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Config:
    """Process-wide settings taken from the command line."""

    require_key: str | None = None
    chunks: int = DEFAULT_CHUNKS


@dataclass(slots=True)
class Stats:
    """Counters served by ``GET /_stats``."""

    requests: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    streams_aborted: int = 0
    requests_cancelled: int = 0
    inflight: int = 0
    last_path: str | None = None
    last_query: dict[str, str] = field(default_factory=dict)
    last_headers: dict[str, str] = field(default_factory=dict)
    last_body: Any = None

    def reset(self) -> None:
        """Zero every counter except the live ``inflight`` gauge."""
        inflight = self.inflight
        fresh = Stats(inflight=inflight)
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-ready copy of the counters."""
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_model": dict(self.by_model),
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_cancelled": self.streams_cancelled,
            "streams_aborted": self.streams_aborted,
            "requests_cancelled": self.requests_cancelled,
            "inflight": self.inflight,
            "last_path": self.last_path,
            "last_query": dict(self.last_query),
            "last_headers": dict(self.last_headers),
            "last_body": self.last_body,
        }


CONFIG_KEY: Final = web.AppKey("config", Config)
STATS_KEY: Final = web.AppKey("stats", Stats)
# Set on a request whose connection the fake drops on purpose (reset, cut-<n>).
ABORTED_KEY: Final = web.RequestKey("aborted", bool)


# --------------------------------------------------------------------------- faults

FaultKind = Literal[
    "none",
    "error",
    "hang",
    "slowfirst",
    "slow",
    "garbage",
    "reset",
    "cut",
    "nousage",
    "echo",
    "long",
    "midstream-error",
    "unknown-event",
    "context-overflow",
    "content-policy",
]

_NUMERIC_FAULT: Final = re.compile(r"(error|slowfirst|slow|cut|long)-(\d+)(?:\D.*)?", re.DOTALL)
_WORD_FAULT: Final = re.compile(
    r"(hang|garbage|reset|nousage|echo|midstream-error|unknown-event|context-overflow"
    r"|content-policy)(?:[^A-Za-z0-9].*)?",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Fault:
    """The scripted behaviour selected by a model name."""

    kind: FaultKind = "none"
    value: int = 0


def parse_fault(model: str) -> Fault:
    """Map a model (or Azure deployment) name to its scripted fault."""
    if match := _NUMERIC_FAULT.fullmatch(model):
        kind: FaultKind = match.group(1)  # type: ignore[assignment]
        return Fault(kind, int(match.group(2)))
    if match := _WORD_FAULT.fullmatch(model):
        word: FaultKind = match.group(1)  # type: ignore[assignment]
        return Fault(word)
    return Fault()


# --------------------------------------------------------------------------- errors


class FakeApiError(Exception):
    """An error answer; the middleware renders it OpenAI-, Azure- or Anthropic-shaped."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        azure: bool = False,
        anthropic: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.azure = azure
        self.anthropic = anthropic

    def body(self) -> dict[str, Any]:
        """The JSON error envelope."""
        if self.anthropic:
            return {
                "type": "error",
                "error": {"type": self.type, "message": self.message},
                "request_id": _request_id(),
            }
        if self.azure:
            return {"error": {"code": self.code or str(self.status), "message": self.message}}
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# status -> (type, code, message template); {model} is substituted.
_FAULT_ERRORS: Final[dict[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "Invalid request to model `{model}` (scripted fault)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-fake***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "permission_denied",
        "You are not allowed to use model `{model}` (scripted fault).",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    408: ("timeout", "timeout", "Request timed out."),
    409: ("invalid_request_error", "conflict", "The request conflicts with another request."),
    413: ("invalid_request_error", "request_too_large", "Request too large for `{model}`."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable request."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 1s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: (
        "server_error",
        "service_unavailable",
        "The engine is currently overloaded, please try again later.",
    ),
    504: ("server_error", "timeout", "The server timed out while processing your request."),
}

_RATE_LIMIT_HEADERS: Final = {
    "retry-after": "1",
    "x-ratelimit-limit-requests": "3",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-limit-tokens": "40000",
    "x-ratelimit-remaining-tokens": "39990",
    "x-ratelimit-reset-tokens": "15ms",
}


def fault_error(status: int, model: str) -> FakeApiError:
    """The scripted ``error-<status>`` answer."""
    if not 400 <= status <= 599:
        return FakeApiError(
            400, f"Scripted fault status {status} is outside 400..599.", param="model"
        )
    default_type = "invalid_request_error" if status < 500 else "server_error"
    type_, code, template = _FAULT_ERRORS.get(
        status, (default_type, None, f"Scripted failure with HTTP {status}.")
    )
    headers = dict(_RATE_LIMIT_HEADERS) if status == 429 else {}
    return FakeApiError(
        status, template.format(model=model), type_=type_, code=code, headers=headers
    )


# --------------------------------------------------------------------------- helpers


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def _json_response(
    payload: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(
        status=status, body=_dumps(payload), content_type="application/json", charset="utf-8"
    )
    response.headers["x-request-id"] = _request_id()
    response.headers["openai-processing-ms"] = "1"
    if headers:
        response.headers.update(headers)
    return response


def _created() -> int:
    return int(time.time())


def _text_tokens(text: str) -> int:
    return len(text) // 4 + 1


def _word_pieces(count: int) -> list[str]:
    words = [_WORDS[i % len(_WORDS)] for i in range(count)]
    return [(REPLY_PREFIX if i == 0 else " ") + word for i, word in enumerate(words)]


def _split_text(text: str, parts: int) -> list[str]:
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _reply_pieces(fault: Fault, chunks: int, raw_body: bytes) -> list[str]:
    if fault.kind == "echo":
        return _split_text(raw_body.decode("utf-8", "replace"), chunks)
    if fault.kind == "long":
        return _word_pieces(fault.value)
    if fault.kind == "cut":
        return _word_pieces(max(chunks, fault.value + 1))
    return _word_pieces(chunks)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


async def _read_object(request: web.Request) -> tuple[dict[str, Any], bytes]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        raise FakeApiError(400, _JSON_PARSE_MESSAGE) from None
    if not isinstance(body, dict):
        raise FakeApiError(
            400, f"Invalid type for body: expected an object, but got {type(body).__name__}."
        )
    return body, raw


def _resolve_model(request: web.Request, body: dict[str, Any]) -> str:
    deployment = request.match_info.get("deployment")
    model = deployment if deployment is not None else body.get("model")
    if not isinstance(model, str) or not model:
        raise FakeApiError(400, "you must provide a model parameter")
    stats = request.app[STATS_KEY]
    stats.by_model[model] = stats.by_model.get(model, 0) + 1
    return model


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    """Return (stream, include_usage), validated as OpenAI does."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise FakeApiError(400, "Invalid type for 'stream': expected a boolean.", param="stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise FakeApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise FakeApiError(
            400, "Invalid type for 'stream_options': expected an object.", param="stream_options"
        )
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise FakeApiError(
            400,
            "Invalid type for 'stream_options.include_usage': expected a boolean.",
            param="stream_options.include_usage",
        )
    return stream, include_usage


def _check_n(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise FakeApiError(400, "The fake upstream only supports n=1.", param="n")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


async def _abort_connection(request: web.Request) -> web.StreamResponse:
    """Drop the TCP connection; the server then cancels this handler (handler_cancellation)."""
    request[ABORTED_KEY] = True
    transport = request.transport
    if transport is not None:
        transport.abort()
    await asyncio.sleep(HANG_SECONDS)
    raise ConnectionResetError("connection aborted by the fake upstream")


async def _entry_faults(request: web.Request, fault: Fault, model: str, stream: bool) -> None:
    """Apply the faults that act before any answer; raise or return normally."""
    if fault.kind == "error":
        raise fault_error(fault.value, model)
    if fault.kind == "context-overflow":
        raise FakeApiError(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 200000 tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    if fault.kind == "content-policy":
        raise FakeApiError(
            400,
            "Your request was rejected as a result of our safety system.",
            code="content_policy_violation",
        )
    if fault.kind == "hang":
        await asyncio.sleep(HANG_SECONDS)
        raise FakeApiError(504, "Hung for an hour.", type_="server_error", code="timeout")
    if fault.kind == "reset":
        await _abort_connection(request)
    if fault.kind == "slowfirst" or (fault.kind == "slow" and not stream):
        await asyncio.sleep(fault.value / 1000)


def _garbage_response() -> web.Response:
    response = web.Response(status=200, body=b'{"id": "chatcmpl-broken", <<this is not JSON>>')
    response.headers["Content-Type"] = "application/json"
    return response


async def _send_json(
    request: web.Request, payload: dict[str, Any], fault: Fault
) -> web.StreamResponse:
    """Answer a non-stream request, honouring ``cut-<n>`` by truncating the body."""
    if fault.kind != "cut":
        return _json_response(payload)
    data = _dumps(payload)
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    request.app[STATS_KEY].streams_aborted += 1
    return await _abort_connection(request)


async def _send_sse(
    request: web.Request,
    events: Sequence[dict[str, Any]],
    *,
    delay: float,
    abort_after: int | None,
) -> web.StreamResponse:
    """Stream ``events`` as SSE, then ``[DONE]``, tracking completion and cancellation."""
    frames = [b"data: " + _dumps(event) + b"\n\n" for event in events]
    return await _send_frames(
        request, frames, delay=delay, abort_after=abort_after, tail=b"data: [DONE]\n\n"
    )


async def _send_frames(
    request: web.Request,
    frames: Sequence[bytes],
    *,
    delay: float,
    abort_after: int | None,
    tail: bytes = b"",
) -> web.StreamResponse:
    """Stream pre-framed SSE events, then ``tail``, tracking completion and cancellation."""
    stats = request.app[STATS_KEY]
    response = web.StreamResponse(status=200)
    response.headers["Content-Type"] = "text/event-stream; charset=utf-8"
    response.headers["Cache-Control"] = "no-cache"
    response.headers["x-request-id"] = _request_id()
    stats.streams_started += 1
    aborting = False
    try:
        await response.prepare(request)
        for index, frame in enumerate(frames):
            if index and delay:
                await asyncio.sleep(delay)
            await response.write(frame)
            if abort_after is not None and index + 1 >= abort_after:
                aborting = True
                stats.streams_aborted += 1
                return await _abort_connection(request)
        if tail:
            if delay:
                await asyncio.sleep(delay)
            await response.write(tail)
        await response.write_eof()
    except asyncio.CancelledError:
        if not aborting:
            stats.streams_cancelled += 1
        raise
    except ConnectionResetError:
        if aborting:
            raise
        # The client went away between two writes; aiohttp ignores the response from here.
        stats.streams_cancelled += 1
        return response
    stats.streams_completed += 1
    return response


def _stream_timing(fault: Fault) -> float:
    return fault.value / 1000 if fault.kind == "slow" else 0.0


# --------------------------------------------------------------------------- chat


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _chat_prompt_tokens(messages: list[Any]) -> int:
    chars = sum(len(_content_text(message.get("content"))) for message in messages)
    return chars // 4 + 1


def _validate_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise FakeApiError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list):
        raise FakeApiError(400, "Invalid type for 'messages': expected an array.", param="messages")
    if not messages:
        raise FakeApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise FakeApiError(
                400,
                f"Missing required parameter: 'messages[{index}].role'.",
                param=f"messages[{index}].role",
                code="missing_required_parameter",
            )
    return messages


def _chat_chunk(
    chunk_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    *,
    usage_field: bool,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
    }
    if usage_field:
        chunk["usage"] = None
    return chunk


def _chat_choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions`` and its Azure twin."""
    config = request.app[CONFIG_KEY]
    body, raw = await _read_object(request)
    model = _resolve_model(request, body)
    messages = _validate_messages(body)
    _check_n(body)
    stream, include_usage = _stream_flags(body)
    fault = parse_fault(model)
    await _entry_faults(request, fault, model, stream)
    if fault.kind == "garbage":
        return _garbage_response()

    pieces = _reply_pieces(fault, config.chunks, raw)
    usage = _usage(_chat_prompt_tokens(messages), len(pieces))
    chat_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = _created()

    if not stream:
        payload: dict[str, Any] = {
            "id": chat_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
        }
        if fault.kind != "nousage":
            payload["usage"] = usage
        return await _send_json(request, payload, fault)

    events = [
        _chat_chunk(
            chat_id,
            created,
            model,
            [_chat_choice({"role": "assistant", "content": ""}, None)],
            usage_field=include_usage,
        )
    ]
    events.extend(
        _chat_chunk(
            chat_id,
            created,
            model,
            [_chat_choice({"content": piece}, None)],
            usage_field=include_usage,
        )
        for piece in pieces
    )
    events.append(
        _chat_chunk(chat_id, created, model, [_chat_choice({}, "stop")], usage_field=include_usage)
    )
    if include_usage and fault.kind != "nousage":
        final = _chat_chunk(chat_id, created, model, [], usage_field=False)
        final["usage"] = usage
        events.append(final)
    abort_after = 1 + fault.value if fault.kind == "cut" else None
    return await _send_sse(request, events, delay=_stream_timing(fault), abort_after=abort_after)


# --------------------------------------------------------------------------- completions


def _token_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(item) for item in value)


def _split_inputs(value: object, param: str) -> list[str | list[int]]:
    """Normalise a prompt/input field into its items (strings or token arrays)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return list(value)
        if _token_list(value):
            return [list(value)]
        if all(_token_list(item) for item in value):
            return [list(item) for item in value]
    raise FakeApiError(
        400,
        f"'$.{param}' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference.",
        param=param,
    )


def _input_tokens(item: str | list[int]) -> int:
    return _text_tokens(item) if isinstance(item, str) else len(item)


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions`` (legacy) and its Azure twin."""
    config = request.app[CONFIG_KEY]
    body, raw = await _read_object(request)
    model = _resolve_model(request, body)
    if "prompt" not in body:
        raise FakeApiError(
            400,
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    prompts = _split_inputs(body["prompt"], "prompt")
    _check_n(body)
    stream, include_usage = _stream_flags(body)
    fault = parse_fault(model)
    await _entry_faults(request, fault, model, stream)
    if fault.kind == "garbage":
        return _garbage_response()

    pieces = _reply_pieces(fault, config.chunks, raw)
    prompt_tokens = sum(_input_tokens(item) for item in prompts)
    completion_tokens = len(pieces) * len(prompts)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = _created()

    def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }

    def choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}

    if not stream:
        payload = envelope([choice(i, "".join(pieces), "stop") for i in range(len(prompts))])
        if fault.kind != "nousage":
            payload["usage"] = usage
        return await _send_json(request, payload, fault)

    events: list[dict[str, Any]] = []
    for index in range(len(prompts)):
        events.extend(envelope([choice(index, piece, None)]) for piece in pieces)
        events.append(envelope([choice(index, "", "stop")]))
    if include_usage:
        for event in events:
            event["usage"] = None
        if fault.kind != "nousage":
            final = envelope([])
            final["usage"] = usage
            events.append(final)
    abort_after = fault.value if fault.kind == "cut" else None
    return await _send_sse(request, events, delay=_stream_timing(fault), abort_after=abort_after)


# --------------------------------------------------------------------------- embeddings


def _embedding_dimensions(model: str) -> int:
    return 3072 if "large" in model else 1536


def embedding_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector (float32 precision) derived only from ``item``.

    The first ``d`` raw components do not depend on ``dimensions``, so a shortened vector is
    the normalised prefix of the full one, as with OpenAI's ``dimensions`` parameter.
    """
    digest = hashlib.sha256(_dumps(item)).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(value / norm for value in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


async def embeddings(request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings`` and its Azure twin."""
    body, _raw = await _read_object(request)
    model = _resolve_model(request, body)
    if "input" not in body:
        raise FakeApiError(
            400,
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    items = _split_inputs(body["input"], "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise FakeApiError(
            400,
            f"Invalid value for 'encoding_format': '{encoding}'. "
            "Supported values are: 'float' and 'base64'.",
            param="encoding_format",
        )
    full = _embedding_dimensions(model)
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = full
    elif not _is_int(dimensions) or not 1 <= dimensions <= full:
        raise FakeApiError(
            400,
            f"Invalid value for 'dimensions': must be an integer between 1 and {full}.",
            param="dimensions",
        )
    fault = parse_fault(model)
    await _entry_faults(request, fault, model, stream=False)
    if fault.kind == "garbage":
        return _garbage_response()

    data: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        vector = embedding_vector(item, dimensions)
        encoded: list[float] | str = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            if encoding == "base64"
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    prompt_tokens = sum(_input_tokens(item) for item in items)
    payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if fault.kind != "nousage":
        payload["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return await _send_json(request, payload, fault)


# --------------------------------------------------------------------------- anthropic

# Anthropic's error type for each status the fake can script (``error-<status>``).
_ANTHROPIC_ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request to model `{model}` (scripted fault)."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use `{model}`."),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}
THINKING_PIECES: Final = ("Let me think", " about this", " carefully.")
THINKING_SIGNATURE: Final = "EqQBCkYIBxgCKkBmYWtlLXNpZ25hdHVyZQ=="
TOOL_TEXT: Final = "I will call the tool."


def _check_anthropic_headers(request: web.Request, required: str | None) -> None:
    # x-api-key is the documented header; anthropic SDKs from 2.x send the key as a Bearer.
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key = request.headers.get("x-api-key") or (token.strip() if scheme.lower() == "bearer" else "")
    if required is not None and key != required:
        message = "invalid x-api-key" if key else "x-api-key header is required"
        raise FakeApiError(401, message, type_="authentication_error", anthropic=True)
    if not request.headers.get("anthropic-version"):
        raise FakeApiError(400, "anthropic-version: header is required", anthropic=True)


def anthropic_fault_error(status: int, model: str) -> FakeApiError:
    """The scripted ``error-<status>`` answer on ``/v1/messages``."""
    default = ("invalid_request_error" if status < 500 else "api_error", f"HTTP {status}.")
    type_, template = _ANTHROPIC_ERRORS.get(status, default)
    headers = {"retry-after": "1"} if status in (429, 529) else {}
    message = template.format(model=model)
    return FakeApiError(status, message, type_=type_, headers=headers, anthropic=True)


def _anthropic_text(content: object) -> str:
    """The text of a string content or of its text (and tool_result) blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            texts.append(_anthropic_text(block.get("content")))
    return "".join(texts)


def _validate_anthropic(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]], int]:
    """Check what the real API checks first; return (model, messages, max_tokens)."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise FakeApiError(400, f"{name}: Field required")
    model, messages, max_tokens = body["model"], body["messages"], body["max_tokens"]
    if not isinstance(model, str) or not model:
        raise FakeApiError(400, "model: Input should be a valid string")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise FakeApiError(400, "max_tokens: Input should be a valid integer greater than 0")
    if not isinstance(messages, list) or not messages:
        raise FakeApiError(400, "messages: at least one message is required")
    previous_role, previous_tool_ids = None, set()
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise FakeApiError(400, f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if role == previous_role:
            raise FakeApiError(400, "messages: roles must alternate between user and assistant")
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        for block in blocks:
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in (
                previous_tool_ids
            ):
                raise FakeApiError(
                    400,
                    f"messages.{index}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message.",
                )
        previous_tool_ids = {b.get("id") for b in blocks if b.get("type") == "tool_use"}
        previous_role = role
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not _is_int(budget) or budget < 1024:
            raise FakeApiError(400, "thinking.enabled.budget_tokens: must be at least 1024")
        if max_tokens <= budget:
            raise FakeApiError(400, "`max_tokens` must be greater than `thinking.budget_tokens`.")
    return model, messages, max_tokens


def _sample_input(schema: object) -> dict[str, Any]:
    """A deterministic tool input with one value per property of the schema."""
    samples = {"string": "alpha", "integer": 1, "number": 1.5, "boolean": True}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    out: dict[str, Any] = {}
    for name, spec in properties.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        out[name] = {"array": [], "object": {}}.get(str(kind), samples.get(str(kind), "alpha"))
    return out


def _pick_tool(body: dict[str, Any], model: str) -> dict[str, Any] | None:
    """The tool the fake calls: a forced one, or the first when the model name says ``tool``."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else {}
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        return next((t for t in tools if t.get("name") == choice.get("name")), None)
    if choice.get("type") == "any" or "tool" in model:
        return tools[0]
    return None


@dataclass(slots=True)
class _Answer:
    """What the fake says, as the pieces a stream sends."""

    thinking: list[str]
    text: list[str]
    tool: dict[str, Any] | None  # {"id", "name", "input"}
    stop_reason: str

    @property
    def output_tokens(self) -> int:
        tool_tokens = len(_split_text(_dumps(self.tool["input"]).decode(), 3)) if self.tool else 0
        return len(self.thinking) + len(self.text) + tool_tokens


def _anthropic_answer(
    body: dict[str, Any], model: str, max_tokens: int, pieces: list[str]
) -> _Answer:
    thinking = body.get("thinking")
    enabled = isinstance(thinking, dict) and thinking.get("type") != "disabled"
    thoughts = list(THINKING_PIECES) if enabled else []
    tool = _pick_tool(body, model)
    forced = isinstance(body.get("tool_choice"), dict) and body["tool_choice"].get("type") in (
        "tool",
        "any",
    )
    if tool is not None:
        call = {
            "id": f"toolu_{uuid.uuid4().hex[:24]}",
            "name": tool.get("name", ""),
            "input": _sample_input(tool.get("input_schema")),
        }
        return _Answer(thoughts, [] if forced else [TOOL_TEXT], call, "tool_use")
    if len(pieces) > max_tokens:
        return _Answer(thoughts, pieces[:max_tokens], None, "max_tokens")
    return _Answer(thoughts, pieces, None, "end_turn")


def _anthropic_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


def _anthropic_message(
    msg_id: str, model: str, answer: _Answer, input_tokens: int
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if answer.thinking:
        thinking = "".join(answer.thinking)
        content.append({"type": "thinking", "thinking": thinking, "signature": THINKING_SIGNATURE})
    if answer.text:
        content.append({"type": "text", "text": "".join(answer.text)})
    if answer.tool:
        content.append({"type": "tool_use", **answer.tool})
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": answer.stop_reason,
        "stop_sequence": None,
        "usage": _anthropic_usage(input_tokens, answer.output_tokens),
    }


def _frame(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\n".encode() + b"data: " + _dumps(event) + b"\n\n"


def _anthropic_events(
    msg_id: str, model: str, answer: _Answer, input_tokens: int, fault: Fault
) -> list[bytes]:
    """Every event of one answer, in the API's order and framing."""
    start = _anthropic_message(msg_id, model, answer, input_tokens)
    start.update(content=[], stop_reason=None, usage=_anthropic_usage(input_tokens, 1))
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    if fault.kind == "unknown-event":
        events.append({"type": "made_up_event", "detail": {"anything": [1, 2]}})

    def block(index: int, first: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        events.append({"type": "content_block_start", "index": index, "content_block": first})
        for delta in deltas:
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})

    index = 0
    if answer.thinking:
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in answer.thinking]
        deltas.append({"type": "signature_delta", "signature": THINKING_SIGNATURE})
        block(index, {"type": "thinking", "thinking": "", "signature": ""}, deltas)
        index += 1
    if answer.text:
        deltas = [{"type": "text_delta", "text": piece} for piece in answer.text]
        block(index, {"type": "text", "text": ""}, deltas)
        index += 1
        if fault.kind == "midstream-error":  # after half of the text
            cut = len(events) - 1 - len(deltas) + max(1, len(deltas) // 2)
            error = {"type": "overloaded_error", "message": "Overloaded"}
            return [_frame(e) for e in events[:cut]] + [_frame({"type": "error", "error": error})]
    if fault.kind == "unknown-event":
        events.append({"type": "made_up_event", "detail": "between blocks"})
    if answer.tool:
        arguments = _dumps(answer.tool["input"]).decode()
        deltas = [{"type": "input_json_delta", "partial_json": ""}]
        deltas += [
            {"type": "input_json_delta", "partial_json": piece}
            for piece in _split_text(arguments, 3)
        ]
        block(index, {"type": "tool_use", **answer.tool, "input": {}}, deltas)
    delta = {"stop_reason": answer.stop_reason, "stop_sequence": None}
    events.append(
        {"type": "message_delta", "delta": delta, "usage": {"output_tokens": answer.output_tokens}}
    )
    events.append({"type": "message_stop"})
    return [_frame(e) for e in events]


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``: Anthropic's Messages API, JSON or SSE."""
    config = request.app[CONFIG_KEY]
    try:
        body, raw = await _read_object(request)
        model, messages, max_tokens = _validate_anthropic(body)
        stream = body.get("stream") is True
    except FakeApiError as error:
        error.anthropic = True
        raise
    stats = request.app[STATS_KEY]
    stats.by_model[model] = stats.by_model.get(model, 0) + 1
    fault = parse_fault(model)
    if fault.kind == "error":
        raise anthropic_fault_error(fault.value, model)
    await _entry_faults(request, fault, model, stream)
    if fault.kind == "garbage":
        return _garbage_response()
    system = body.get("system")
    chars = len(_anthropic_text(system)) + sum(
        len(_anthropic_text(m.get("content"))) for m in messages
    )
    answer = _anthropic_answer(body, model, max_tokens, _reply_pieces(fault, config.chunks, raw))
    msg_id = f"msg_{uuid.uuid4().hex[:24]}"
    if not stream:
        return await _send_json(
            request, _anthropic_message(msg_id, model, answer, chars // 4 + 1), fault
        )
    frames = _anthropic_events(msg_id, model, answer, chars // 4 + 1, fault)
    abort_after = fault.value if fault.kind == "cut" else None
    return await _send_frames(request, frames, delay=_stream_timing(fault), abort_after=abort_after)


# --------------------------------------------------------------------------- models & control


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models``."""
    return _json_response({"object": "list", "data": [_model_object(m) for m in MODEL_IDS]})


async def retrieve_model(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models/{model}``: every name exists except ``error-404``-style ones."""
    model = request.match_info["model"]
    fault = parse_fault(model)
    if fault.kind == "error":
        raise fault_error(fault.value, model)
    return _json_response(_model_object(model))


async def get_stats(request: web.Request) -> web.StreamResponse:
    """``GET /_stats``."""
    return _json_response(request.app[STATS_KEY].snapshot())


async def reset_stats(request: web.Request) -> web.StreamResponse:
    """``POST /_reset``."""
    stats = request.app[STATS_KEY]
    stats.reset()
    return _json_response(stats.snapshot())


# --------------------------------------------------------------------------- middlewares


def _is_control(request: web.Request) -> bool:
    return request.path.startswith("/_")


def _is_azure(request: web.Request) -> bool:
    return request.path.startswith("/openai/")


def _is_anthropic(request: web.Request) -> bool:
    return request.path.startswith("/v1/messages")


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the request in the stats and track in-flight/cancelled handlers."""
    if _is_control(request):
        return await handler(request)
    stats = request.app[STATS_KEY]
    stats.requests += 1
    stats.by_path[request.path] = stats.by_path.get(request.path, 0) + 1
    stats.last_path = request.path
    stats.last_query = dict(request.query)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    stats.last_headers = headers
    stats.last_body = _parse_body(await request.read()) if request.can_read_body else None
    stats.inflight += 1
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if not request.get(ABORTED_KEY, False):
            stats.requests_cancelled += 1
        raise
    finally:
        stats.inflight -= 1


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render ``FakeApiError`` and unknown routes as OpenAI/Azure JSON errors."""
    try:
        return await handler(request)
    except FakeApiError as error:
        return _json_response(error.body(), status=error.status, headers=error.headers)
    except web.HTTPException as exc:
        if exc.status not in (404, 405):
            raise
        invalid_url = FakeApiError(
            exc.status,
            f"Invalid URL ({request.method} {request.path})",
            azure=_is_azure(request),
            anthropic=_is_anthropic(request),
        )
        return _json_response(invalid_url.body(), status=exc.status)


def _openai_key_error(provided: str | None) -> FakeApiError:
    if not provided:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        shown = f"{provided[:3]}***{provided[-4:]}" if len(provided) > 8 else "***"
        message = (
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    return FakeApiError(401, message, code="invalid_api_key")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Enforce ``--require-key`` (Bearer, or Anthropic's ``x-api-key``) and the Azure rules."""
    if _is_control(request):
        return await handler(request)
    required = request.app[CONFIG_KEY].require_key
    if _is_anthropic(request):
        _check_anthropic_headers(request, required)
    elif _is_azure(request):
        key = request.headers.get("api-key")
        if not key or (required is not None and key != required):
            raise FakeApiError(
                401,
                "Access denied due to invalid subscription key or wrong API endpoint. Make "
                "sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
                code="401",
                azure=True,
            )
        if not request.query.get("api-version"):
            raise FakeApiError(
                400,
                "Missing required query parameter 'api-version'.",
                code="BadRequest",
                azure=True,
            )
    elif required is not None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or token != required:
            raise _openai_key_error(token or None)
    return await handler(request)


# --------------------------------------------------------------------------- app & process


def create_app(config: Config | None = None) -> web.Application:
    """Build the aiohttp application (usable in-process with aiohttp's test utilities too)."""
    app = web.Application(middlewares=[observe, errors, authenticate])
    app[CONFIG_KEY] = config or Config()
    app[STATS_KEY] = Stats()
    for prefix in ("/v1", "/openai/deployments/{deployment}"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
    app.router.add_post("/v1/messages", anthropic_messages)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", retrieve_model)
    app.router.add_get("/_stats", get_stats)
    app.router.add_post("/_reset", reset_stats)
    return app


async def serve(host: str, port: int, config: Config) -> None:
    """Serve until SIGTERM/SIGINT, announcing ``LISTENING <port>`` once bound."""
    runner = web.AppRunner(
        create_app(config), handler_cancellation=True, access_log=None, shutdown_timeout=0.1
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        sys.stdout.write(f"LISTENING {bound_port}\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--require-key", default=None, help="demand this API key")
    parser.add_argument(
        "--chunks",
        type=_positive_int,
        default=DEFAULT_CHUNKS,
        help="content chunks (words) per reply",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse arguments and serve until signalled."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = Config(require_key=args.require_key, chunks=args.chunks)
    coro = serve(args.host, args.port, config)
    try:
        import uvloop  # optional accelerator
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
