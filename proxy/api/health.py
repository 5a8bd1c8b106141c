"""Probes and the metrics scrape. Cheap handlers, no authentication, no I/O."""

from __future__ import annotations

from typing import Any, cast

from sanic import HTTPResponse, Request, Sanic

from proxy import metrics
from proxy.context import AppContext

_ALIVE = b'{"status":"ok"}'


async def liveness(request: Request) -> HTTPResponse:
    return HTTPResponse(_ALIVE, content_type="application/json")


async def readiness(request: Request) -> HTTPResponse:
    ctx = cast(AppContext | None, getattr(request.app.ctx, "proxy", None))
    if ctx is None:
        return HTTPResponse(b'{"status":"starting"}', status=503, content_type="application/json")
    body, ready = ctx.readiness()
    return HTTPResponse(body, status=200 if ready else 503, content_type="application/json")


async def scrape(request: Request) -> HTTPResponse:
    return HTTPResponse(metrics.render(), content_type=metrics.CONTENT_TYPE)


def register(app: Sanic[Any, Any]) -> None:
    for path in ("/health", "/health/liveness", "/health/liveliness"):
        app.add_route(liveness, path, methods=["GET"], name=path.strip("/").replace("/", "_"))
    for path in ("/ready", "/health/readiness"):
        app.add_route(readiness, path, methods=["GET"], name=path.strip("/").replace("/", "_"))
    app.add_route(scrape, "/metrics", methods=["GET"], name="metrics")
