"""The Anthropic-native routes: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Same pipeline as the OpenAI routes (authentication, routing, metrics); errors are rendered
in Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``) so that the
official Anthropic SDK raises its matching exception classes.
"""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse, Request, Sanic

from proxy.api.openai import check_content_type, context_of, record_id, request_id, send_result
from proxy.api.response import Response
from proxy.errors import ProxyError
from proxy.providers.anthropic_reverse import openai_error_to_anthropic


def _error(exc: ProxyError, rid: str) -> HTTPResponse:
    headers = {**exc.headers(), "x-request-id": rid}
    return Response(
        openai_error_to_anthropic(exc),
        status=exc.status,
        headers=headers,
        content_type="application/json",
    )


async def messages(request: Request) -> HTTPResponse | None:
    rid = request_id(request)
    try:
        check_content_type(request)
        pipeline = context_of(request).pipeline
        result = await pipeline.run_messages(request.body, request.headers, record_id(request))
    except ProxyError as exc:
        return _error(exc, rid)
    return await send_result(request, result, rid)


async def count_tokens(request: Request) -> HTTPResponse:
    rid = request_id(request)
    try:
        check_content_type(request)
        body = await context_of(request).pipeline.count_message_tokens(
            request.body, request.headers
        )
    except ProxyError as exc:
        return _error(exc, rid)
    return Response(body, headers={"x-request-id": rid}, content_type="application/json")


def register(app: Sanic[Any, Any]) -> None:
    for prefix in ("/v1", ""):
        name = prefix.replace("/", "_")
        app.add_route(messages, f"{prefix}/messages", methods=["POST"], name=f"messages{name}")
        app.add_route(
            count_tokens,
            f"{prefix}/messages/count_tokens",
            methods=["POST"],
            name=f"count_tokens{name}",
        )
