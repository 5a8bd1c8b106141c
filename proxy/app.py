"""create_app(settings): the composition root, the only module that constructs things.

Each worker process builds its own AppContext (upstream pools need that worker's event loop)
in ``before_server_start`` and closes it in ``after_server_stop``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sanic import Sanic

from proxy import metrics, tokens
from proxy.api import anthropic as anthropic_api
from proxy.api import health
from proxy.api import openai as openai_api
from proxy.api.errors import OpenAIErrorHandler
from proxy.context import AppContext
from proxy.pipeline import Pipeline
from proxy.routing import Router
from proxy.settings import Settings
from proxy.upstream import Transport, make_transport

log = logging.getLogger("llm_proxy")


def build_context(settings: Settings) -> AppContext:
    router = Router(settings)
    transports: dict[str, Transport] = {d.id: make_transport(d.params) for d in router.deployments}
    recorder = metrics.Recorder(router.aliases, enabled=settings.server.metrics)
    pipeline = Pipeline(router, transports, recorder, settings.master_key)
    return AppContext(settings, router, transports, pipeline)


def create_app(settings: Settings) -> Sanic[Any, Any]:
    app = Sanic("llm_proxy", error_handler=OpenAIErrorHandler(), configure_logging=False)
    s = settings.server
    longest = max((m.params.timeout for m in settings.model_list), default=600.0)
    app.config.update(
        REQUEST_MAX_SIZE=s.max_request_bytes,
        REQUEST_TIMEOUT=s.request_read_timeout,
        # Sanic's cap on producing a response must outlast the longest upstream call.
        RESPONSE_TIMEOUT=longest + 60,
        KEEP_ALIVE_TIMEOUT=s.keep_alive_timeout,
        GRACEFUL_SHUTDOWN_TIMEOUT=s.graceful_shutdown_seconds,
        ACCESS_LOG=s.access_log,
        MOTD=False,
        NOISY_EXCEPTIONS=False,
        AUTO_RELOAD=False,
        INSPECTOR=False,
    )
    openai_api.register(app)
    anthropic_api.register(app)
    health.register(app)

    @app.before_server_start
    async def _start(app: Sanic[Any, Any]) -> None:
        tokens.preload_encodings(m.params.upstream_model for m in settings.model_list)
        app.ctx.proxy = build_context(settings)

    @app.before_server_stop
    async def _drain(app: Sanic[Any, Any]) -> None:
        ctx: AppContext | None = getattr(app.ctx, "proxy", None)
        if ctx is not None:
            ctx.draining = True

    @app.after_server_stop
    async def _stop(app: Sanic[Any, Any]) -> None:
        ctx: AppContext | None = getattr(app.ctx, "proxy", None)
        if ctx is not None:
            await ctx.aclose()
        metrics.process_exited(os.getpid())

    return app
