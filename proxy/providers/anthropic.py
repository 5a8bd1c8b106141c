"""Anthropic's Messages API behind the OpenAI chat interface.

Deployments name the model ``anthropic/<model>``. Requests go to ``{api_base}/v1/messages``
with ``x-api-key`` and ``anthropic-version`` headers; ``api_base`` defaults to
``https://api.anthropic.com`` and may be given with or without a trailing ``/v1`` (OpenAI
habits), which is stripped. Only chat completions exist there: legacy completions and
embeddings are refused with a 400 (``url`` still answers for every operation, as the router
asks for all of them up front).

The translation itself lives beside this adapter: ``_anthropic_request`` (the body),
``_anthropic_content`` (message parts), ``_anthropic_response`` (answers, usage, errors) and
``_anthropic_stream`` (SSE).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from proxy.errors import InvalidRequestError, ProxyError
from proxy.providers._anthropic_request import json_tool_name, to_messages_request
from proxy.providers._anthropic_response import parse_anthropic_error, to_chat_completion
from proxy.providers._anthropic_stream import AnthropicStreamTranslator
from proxy.providers.base import Operation, ParsedRequest, ParsedResponse, UpstreamRequest
from proxy.settings import DeploymentParams

ANTHROPIC_API_BASE = "https://api.anthropic.com"


class _FormatView(msgspec.Struct):
    """Reads only ``response_format`` back from a request body (the rest is skipped)."""

    response_format: dict[str, object] | str | None = None


_format_decoder = msgspec.json.Decoder(_FormatView)


class AnthropicAdapter:
    name = "anthropic"

    def prepare(self, params: DeploymentParams) -> Mapping[str, str]:
        headers = {
            "content-type": "application/json",
            "anthropic-version": params.anthropic_version,
            **params.headers,
        }
        if params.api_key:
            headers["x-api-key"] = params.api_key
        return headers

    def url(self, op: Operation, params: DeploymentParams) -> str:
        base = (params.api_base or ANTHROPIC_API_BASE).rstrip("/").removesuffix("/v1")
        return f"{base}/v1/messages"

    def build_request(
        self, req: ParsedRequest, params: DeploymentParams, url: str, headers: Mapping[str, str]
    ) -> UpstreamRequest:
        if req.op is not Operation.CHAT:
            raise InvalidRequestError(
                f"The model '{req.alias}' only supports /v1/chat/completions, "
                f"not /v1/{req.op.value}.",
                param="model",
                code="unsupported_operation",
            )
        data = req.data if req.data is not None else orjson.loads(req.body)
        body, dropped = to_messages_request(data, params)
        return UpstreamRequest(url, headers, orjson.dumps(body), dropped)

    def parse_response(self, req: ParsedRequest, body: bytes) -> ParsedResponse:
        return to_chat_completion(body, _json_tool(req))

    def stream_translator(self, req: ParsedRequest) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(
            json_tool=_json_tool(req), include_usage=req.client_wants_usage
        )

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, deployment: str
    ) -> ProxyError:
        return parse_anthropic_error(status, headers, body, deployment)


def _json_tool(req: ParsedRequest) -> str | None:
    """The forced tool of ``response_format: json_schema``, worked out again from the request.

    Recomputing it keeps the adapter stateless; it costs one skim of the request body, and
    only for Anthropic deployments.
    """
    data: dict[str, Any]
    if req.data is not None:
        data = req.data
    else:
        try:
            view = _format_decoder.decode(req.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        data = {"response_format": view.response_format}
    return json_tool_name(data)
