"""The OpenAI and Azure adapters: requests, responses, error mapping."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import (
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from proxy.providers.base import Operation, ParsedRequest
from proxy.providers.openai import AzureAdapter, OpenAIAdapter, parse_openai_error
from proxy.settings import DeploymentParams

BODY = orjson.dumps({"model": "alias", "messages": [{"role": "user", "content": "hi"}]})


def _req(*, stream: bool = False, wants_usage: bool = False, body: bytes = BODY) -> ParsedRequest:
    return ParsedRequest(Operation.CHAT, "alias", body, stream, wants_usage)


def test_body_forwarded_untouched_when_nothing_changes() -> None:
    """Same model name upstream and no stream: the client's bytes go out as they came."""
    params = DeploymentParams(model="openai/alias", api_key="sk-up")
    adapter = OpenAIAdapter()
    headers = adapter.prepare(params)
    out = adapter.build_request(_req(), params, adapter.url(Operation.CHAT, params), headers)
    assert out.body is BODY
    assert out.url == "https://api.openai.com/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-up"


def test_model_renamed_and_usage_requested_for_streams() -> None:
    """The alias becomes the upstream name; streams ask for usage, keeping other options."""
    body = orjson.dumps(
        {"model": "alias", "messages": [], "stream": True, "stream_options": {"x": 1}}
    )
    params = DeploymentParams(model="openai/gpt-4o", api_base="http://h:1/v1/")
    adapter = OpenAIAdapter()
    out = adapter.build_request(
        _req(stream=True, body=body), params, adapter.url(Operation.CHAT, params), {}
    )
    sent = orjson.loads(out.body)
    assert sent["model"] == "gpt-4o"
    assert sent["stream_options"] == {"x": 1, "include_usage": True}
    assert out.url == "http://h:1/v1/chat/completions"


def test_azure_url_and_key_header() -> None:
    """Azure puts the deployment and api-version in the URL and the key in api-key."""
    params = DeploymentParams(
        model="azure/my-dep",
        api_base="https://x.openai.azure.com/",
        api_key="k",
        api_version="2024-10-21",
    )
    adapter = AzureAdapter()
    assert adapter.url(Operation.EMBEDDING, params) == (
        "https://x.openai.azure.com/openai/deployments/my-dep/embeddings?api-version=2024-10-21"
    )
    assert adapter.prepare(params)["api-key"] == "k"
    out = adapter.build_request(_req(), params, "u", {})
    assert out.body is BODY  # Azure ignores the body's model


def test_garbage_response_is_a_protocol_error() -> None:
    """A 200 whose body is not JSON is reported as a bad upstream response."""
    with pytest.raises(UpstreamProtocolError):
        OpenAIAdapter().parse_response(_req(), b"<html>oops")


def test_usage_read_from_response() -> None:
    """Usage is read from a non-stream answer without touching the rest."""
    body = orjson.dumps(
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    )
    parsed = OpenAIAdapter().parse_response(_req(), body)
    assert parsed.body is body
    assert parsed.usage is not None
    assert parsed.usage.completion_tokens == 4


def _error(message: str, type_: str = "invalid_request_error", code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def test_client_errors_pass_through() -> None:
    """400s keep the upstream's status, type, code and message (context_length_exceeded)."""
    err = parse_openai_error(400, {}, _error("too long", code="context_length_exceeded"), "d")
    assert isinstance(err, InvalidRequestError)
    assert (err.status, err.code, err.message) == (400, "context_length_exceeded", "too long")
    assert isinstance(parse_openai_error(404, {}, _error("no model"), "d"), NotFoundError)


def test_rate_limit_keeps_retry_after() -> None:
    """An upstream 429 stays a 429 and carries the upstream's retry-after."""
    err = parse_openai_error(429, {"retry-after": "7"}, _error("slow down"), "d")
    assert isinstance(err, RateLimitedError)
    assert err.headers()["retry-after"] == "7"


def test_upstream_credentials_failure_is_a_gateway_error() -> None:
    """An upstream 401 is the proxy's misconfiguration, not the client's: 502."""
    err = parse_openai_error(401, {}, _error("bad key"), "dep-1")
    assert isinstance(err, UpstreamStatusError)
    assert err.status == 502
    assert "dep-1" in err.message


@pytest.mark.parametrize(
    ("status", "mapped"), [(500, 502), (502, 502), (503, 503), (504, 504), (408, 504)]
)
def test_server_errors_map_to_gateway_statuses(status: int, mapped: int) -> None:
    """Upstream 5xx become 502/503/504 with the upstream's message kept."""
    err = parse_openai_error(status, {}, b"plain text failure", "d")
    assert err.status == mapped
    assert "plain text failure" in err.message


def test_detail_style_errors_are_read() -> None:
    """FastAPI-style {"detail": ...} bodies (vLLM) give their message."""
    err = parse_openai_error(400, {}, b'{"detail": "bad field"}', "d")
    assert err.message == "bad field"
