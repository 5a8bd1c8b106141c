"""OpenAI and OpenAI-compatible upstreams (vLLM, Ollama, Together, Groq...), and Azure OpenAI.

The client's body is forwarded as received unless something must change: the model name
(the client sends our alias, the upstream wants its own name) or, for streams, the request
for usage (``stream_options.include_usage``) that the proxy adds for accounting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from proxy.errors import (
    InvalidRequestError,
    NotFoundError,
    ProxyError,
    RateLimitedError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from proxy.providers._sse import OpenAIStreamRelay
from proxy.providers.base import Operation, ParsedRequest, ParsedResponse, UpstreamRequest
from proxy.settings import DeploymentParams
from proxy.wire.openai import UsageView

OPENAI_API_BASE = "https://api.openai.com/v1"
_usage_decoder = msgspec.json.Decoder(UsageView)


class _UpstreamError(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _UpstreamError | str | None = None
    detail: str | None = None  # FastAPI-based servers (vLLM) answer {"detail": ...}
    message: str | None = None


_error_decoder = msgspec.json.Decoder(_ErrorEnvelope)


class OpenAIAdapter:
    name = "openai"
    rewrites_model = True

    def prepare(self, params: DeploymentParams) -> Mapping[str, str]:
        headers = {"content-type": "application/json", **params.headers}
        if params.api_key:
            headers["authorization"] = f"Bearer {params.api_key}"
        return headers

    def url(self, op: Operation, params: DeploymentParams) -> str:
        base = (params.api_base or OPENAI_API_BASE).rstrip("/")
        return f"{base}/{op.value}"

    def build_request(
        self, req: ParsedRequest, params: DeploymentParams, url: str, headers: Mapping[str, str]
    ) -> UpstreamRequest:
        rename = self.rewrites_model and params.upstream_model != req.alias
        ask_usage = req.stream and not req.client_wants_usage
        if not rename and not ask_usage:
            return UpstreamRequest(url, headers, req.body)
        data: dict[str, Any] = orjson.loads(req.body)
        if rename:
            data["model"] = params.upstream_model
        if ask_usage:
            options = data.get("stream_options")
            data["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return UpstreamRequest(url, headers, orjson.dumps(data))

    def parse_response(self, req: ParsedRequest, body: bytes) -> ParsedResponse:
        try:
            usage = _usage_decoder.decode(body).usage
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamProtocolError(
                f"the upstream answered 200 with a body that is not a valid response: {exc}"
            ) from exc
        return ParsedResponse(body, usage)

    def stream_translator(self, req: ParsedRequest) -> OpenAIStreamRelay:
        return OpenAIStreamRelay(strip_usage=not req.client_wants_usage)

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, deployment: str
    ) -> ProxyError:
        return parse_openai_error(status, headers, body, deployment)


class AzureAdapter(OpenAIAdapter):
    """Azure OpenAI: the deployment is in the URL, the key in ``api-key``."""

    name = "azure"
    rewrites_model = False  # Azure routes by the URL's deployment, not the body's model

    def prepare(self, params: DeploymentParams) -> Mapping[str, str]:
        headers = {"content-type": "application/json", **params.headers}
        if params.api_key:
            headers["api-key"] = params.api_key
        return headers

    def url(self, op: Operation, params: DeploymentParams) -> str:
        base = (params.api_base or "").rstrip("/")
        return (
            f"{base}/openai/deployments/{params.upstream_model}/{op.value}"
            f"?api-version={params.api_version}"
        )


def parse_openai_error(
    status: int, headers: Mapping[str, str], body: bytes, deployment: str
) -> ProxyError:
    """Map an upstream error answer to the error our client sees.

    The client's own mistakes (400, 404, 413, 422) pass through with the upstream's message,
    so that e.g. ``context_length_exceeded`` reaches the client intact. A 401/403 means the
    proxy's credentials for this deployment are wrong, which is not the client's fault: 502.
    """
    message, type_, param, code = _error_fields(body)
    retry_after = _retry_after(headers)
    if status == 429:
        err: ProxyError = RateLimitedError(
            message or "upstream rate limit reached", code=code, retry_after=retry_after
        )
        return err
    if status in (401, 403):
        return UpstreamStatusError(
            f"deployment {deployment}: the upstream rejected the proxy's credentials "
            f"({status}: {message or 'no message'})",
            status=502,
            type="upstream_auth_error",
            code="upstream_auth_error",
            retryable=True,
        )
    if status == 404:
        return NotFoundError(message or "not found upstream", code=code or "not_found")
    if 400 <= status < 500 and status != 408:
        err = InvalidRequestError(message or f"upstream answered {status}", param=param, code=code)
        err.status = status if status in (400, 409, 413, 422) else 400
        if type_:
            err.type = type_
        return err
    mapped = {503: 503, 504: 504, 408: 504}.get(status, 502)
    return UpstreamStatusError(
        f"upstream error {status}: {message or 'no message'}",
        status=mapped,
        type=type_ or ("timeout" if mapped == 504 else "upstream_error"),
        code=code,
        retry_after=retry_after,
        retryable=True,
    )


def _error_fields(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    try:
        env = _error_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = body[:300].decode("utf-8", "replace").strip()
        return (text or None), None, None, None
    if isinstance(env.error, _UpstreamError):
        e = env.error
        code = str(e.code) if e.code is not None else None
        return e.message, e.type, e.param, code
    return env.error or env.detail or env.message, None, None, None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
