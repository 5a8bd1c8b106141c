"""The OpenAI-compatible routes, with and without the ``/v1`` prefix."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncGenerator
from typing import Any, cast

import msgspec
from sanic import HTTPResponse, Request, Sanic

from proxy.api.response import Response
from proxy.context import AppContext
from proxy.errors import ModelNotFoundError, UnsupportedMediaTypeError
from proxy.pipeline import Reply, StreamReply
from proxy.providers.base import Operation
from proxy.wire.openai import Model, ModelList

_encoder = msgspec.json.Encoder()
_MAX_REQUEST_ID = 128
# Unique without a syscall per request: a random prefix per process, then a counter.
_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count(1)


def request_id(request: Request) -> str:
    """The caller's ``x-request-id`` when it is sane, else a new one; kept on the request."""
    rid: str | None = getattr(request.ctx, "request_id", None)
    if rid is None:
        given = request.headers.get("x-request-id")
        if given and len(given) <= _MAX_REQUEST_ID and given.isprintable():
            rid = given
            request.ctx.record_id = f"{given}.{_ID_PREFIX}{next(_id_counter):012x}"
        else:
            rid = request.ctx.record_id = f"{_ID_PREFIX}{next(_id_counter):012x}"
        request.ctx.request_id = rid
    return rid


def record_id(request: Request) -> str:
    """This request's own id for its usage record and limiter entries: unique even when a
    client sends the same ``x-request-id`` twice (a repeated id must not merge two requests'
    rate-limit slots or drop the second one's usage and spend)."""
    request_id(request)
    rid: str = request.ctx.record_id
    return rid


def context_of(request: Request) -> AppContext:
    return cast(AppContext, request.app.ctx.proxy)


def check_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type")
    if ctype and not ctype.lower().startswith(("application/json", "text/json")):
        raise UnsupportedMediaTypeError(
            f"Unsupported content type {ctype.split(';')[0]!r}: send the body as "
            "'Content-Type: application/json'."
        )


async def _forward(request: Request, op: Operation) -> HTTPResponse | None:
    rid = request_id(request)
    check_content_type(request)
    pipeline = context_of(request).pipeline
    result = await pipeline.run(op, request.body, request.headers, record_id(request))
    return await send_result(request, result, rid)


async def send_result(
    request: Request, result: Reply | StreamReply, rid: str
) -> HTTPResponse | None:
    """Answer with a JSON reply, or relay a stream chunk by chunk."""
    if isinstance(result, Reply):
        result.headers["x-request-id"] = rid
        return Response(
            result.body,
            status=result.status,
            headers=result.headers,
            content_type="application/json",
        )
    headers = result.headers
    headers["x-request-id"] = rid
    chunks = cast(AsyncGenerator[bytes, None], result.chunks)
    # Take the first chunk before answering: once the relay has started, its own cleanup
    # (accounting, metrics, closing the upstream) runs however the rest ends, even if
    # sending the headers fails; a relay that never started would skip it.
    try:
        first: bytes | None = await anext(chunks)
    except StopAsyncIteration:
        first = None
    try:
        response = await request.respond(
            Response(headers=headers, content_type="text/event-stream")
        )
        if first:
            await response.send(first)
        async for data in chunks:
            await response.send(data)
    finally:
        # Closes the upstream request too when the client went away mid-stream.
        await chunks.aclose()
    await response.eof()
    return None


async def chat_completions(request: Request) -> HTTPResponse | None:
    return await _forward(request, Operation.CHAT)


async def completions(request: Request) -> HTTPResponse | None:
    return await _forward(request, Operation.COMPLETION)


async def embeddings(request: Request) -> HTTPResponse | None:
    return await _forward(request, Operation.EMBEDDING)


def _model(ctx: AppContext, alias: str) -> Model:
    dep = ctx.pipeline.deployment_of(alias)
    owner = dep.provider if dep else "llm-proxy"
    return Model(id=alias, created=ctx.started_at, owned_by=owner)


async def list_models(request: Request) -> HTTPResponse:
    rid = request_id(request)
    ctx = context_of(request)
    aliases = await ctx.pipeline.allowed_models(request.headers)
    body = _encoder.encode(ModelList([_model(ctx, a) for a in aliases]))
    return Response(body, headers={"x-request-id": rid}, content_type="application/json")


async def get_model(request: Request, model_id: str) -> HTTPResponse:
    rid = request_id(request)
    ctx = context_of(request)
    if model_id not in await ctx.pipeline.allowed_models(request.headers):
        raise ModelNotFoundError(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
        )
    body = _encoder.encode(_model(ctx, model_id))
    return Response(body, headers={"x-request-id": rid}, content_type="application/json")


_ROUTES = (
    (chat_completions, "/chat/completions", "POST"),
    (completions, "/completions", "POST"),
    (embeddings, "/embeddings", "POST"),
    (list_models, "/models", "GET"),
    (get_model, "/models/<model_id:path>", "GET"),
)


def register(app: Sanic[Any, Any]) -> None:
    for prefix in ("/v1", ""):
        for handler, path, method in _ROUTES:
            name = handler.__name__ + prefix.replace("/", "_")
            app.add_route(handler, prefix + path, methods=[method], name=name)
