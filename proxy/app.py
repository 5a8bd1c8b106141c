"""create_app(settings): the composition root, the only module that constructs things.

Each worker process builds its own AppContext (upstream pools need that worker's event loop)
in ``before_server_start`` and closes it in ``after_server_stop``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from contextlib import suppress
from typing import Any

import msgspec
from sanic import Sanic

from proxy import logs, metrics, tokens
from proxy.accounting import Ledger
from proxy.api import admin as admin_api
from proxy.api import anthropic as anthropic_api
from proxy.api import health
from proxy.api import openai as openai_api
from proxy.api.errors import OpenAIErrorHandler
from proxy.cache import ResponseCache
from proxy.context import AppContext
from proxy.keys import KeyCache, KeyService
from proxy.limits import LimitsSettings, create_key_events, create_limiter
from proxy.pipeline import Pipeline
from proxy.routing import Router
from proxy.settings import Settings
from proxy.store import DatabaseUnavailableError, Store, open_store
from proxy.upstream import Transport, make_transport
from proxy.usage.prices import default_prices
from proxy.usage.writer import SpendWriter

log = logging.getLogger("llm_proxy")


def limits_settings(settings: Settings) -> LimitsSettings:
    ours = msgspec.structs.asdict(settings.limits)
    ours.pop("default_output_tokens")  # the ledger's, not the limiter's
    return msgspec.convert(ours, LimitsSettings)


def open_database(settings: Settings) -> Store:
    db = settings.database
    return open_store(
        db.url,
        sqlite_path=db.sqlite_path,
        schema=db.schema,
        pool_min_size=db.pool_min,
        pool_max_size=db.pool_max,
    )


async def build_context(settings: Settings) -> AppContext:
    """Every long-lived object of one worker, wired together."""
    router = Router(settings)
    recorder = metrics.Recorder(router.aliases, enabled=settings.server.metrics)
    transports: dict[str, Transport] = {
        d.id: make_transport(d.params, on_queue=recorder.queue) for d in router.deployments
    }
    store = open_database(settings)
    database_ok = True
    if settings.database.migrate_on_start:
        try:
            await store.migrate()  # idempotent, and serialised across processes
        except DatabaseUnavailableError as exc:
            database_ok = False
            log.error("database unavailable at start-up, running degraded: %s", exc)
    usage = settings.usage
    writer = None
    if usage.enabled:
        writer = SpendWriter(
            store,
            batch_size=usage.batch_size,
            flush_interval=usage.flush_interval_seconds,
            max_buffered=usage.max_buffered,
            spill_dir=usage.spill_dir,
        )
        await writer.start()
    lset = limits_settings(settings)
    limiter = create_limiter(lset)
    events = create_key_events(lset)
    cache = KeyCache(
        ttl=settings.keys.cache_ttl_seconds, negative_ttl=settings.keys.negative_cache_ttl_seconds
    )
    keys = KeyService(store, cache, publish=events.publish)
    events.subscribe(keys.invalidate, on_resync=cache.clear)
    ledger = Ledger(
        limiter,
        writer,
        default_prices(),
        default_output_tokens=settings.limits.default_output_tokens,
    )
    response_cache = ResponseCache.from_settings(settings.cache) if settings.cache else None
    pipeline = Pipeline(
        router,
        transports,
        recorder,
        settings.master_key,
        keys=keys,
        ledger=ledger,
        access=logs.AccessLog(settings.server.access_log),
        retry=settings.router,
        cache=response_cache,
    )
    return AppContext(
        settings,
        router,
        transports,
        pipeline,
        store=store,
        keys=keys,
        limiter=limiter,
        events=events,
        writer=writer,
        ledger=ledger,
        cache=response_cache,
        database_ok=database_ok,
    )


def create_app(settings: Settings) -> Sanic[Any, Any]:
    s = settings.server
    # Worker processes are spawned: each sets up its own logging, like the main process.
    logs.configure_logging(s.log_level, s.log_format)
    app = Sanic("llm_proxy", error_handler=OpenAIErrorHandler(), configure_logging=False)
    longest = max((m.params.timeout for m in settings.model_list), default=600.0)
    app.config.update(
        REQUEST_MAX_SIZE=s.max_request_bytes,
        REQUEST_TIMEOUT=s.request_read_timeout,
        # Sanic's cap on producing a response must outlast the longest upstream call.
        RESPONSE_TIMEOUT=longest + 60,
        KEEP_ALIVE_TIMEOUT=s.keep_alive_timeout,
        GRACEFUL_SHUTDOWN_TIMEOUT=s.graceful_shutdown_seconds,
        ACCESS_LOG=False,  # proxy.logs.AccessLog writes the access lines
        MOTD=False,
        NOISY_EXCEPTIONS=False,
        AUTO_RELOAD=False,
        INSPECTOR=False,
    )
    openai_api.register(app)
    anthropic_api.register(app)
    admin_api.register(app)
    health.register(app)
    if s.metrics:
        # Client connections, counted once per connection (not per request).
        app.signal("http.lifecycle.begin")(_connection_opened)
        app.signal("http.lifecycle.complete")(_connection_closed)

    @app.before_server_start
    async def _start(app: Sanic[Any, Any]) -> None:
        tokens.preload_encodings(m.params.upstream_model for m in settings.model_list)
        app.ctx.proxy = await build_context(settings)
        # Everything built so far lives as long as the worker (the tokenizer's rank tables
        # alone are hundreds of thousands of objects): move it out of the cyclic GC's sight,
        # so collections scan only what requests allocate (bench/README.md has the gain).
        gc.collect()
        gc.freeze()
        if s.metrics:
            app.ctx.loop_lag = metrics.start_loop_lag_monitor(asyncio.get_running_loop())
            ctx = app.ctx.proxy
            app.ctx.services = metrics.start_service_monitor(ctx.limiter, ctx.writer)

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
        for name in ("loop_lag", "services"):
            task: asyncio.Task[None] | None = getattr(app.ctx, name, None)
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        metrics.process_exited(os.getpid())

    return app


async def _connection_opened(conn_info: Any) -> None:
    metrics.CONNECTIONS_OPEN.inc()


async def _connection_closed(conn_info: Any) -> None:
    metrics.CONNECTIONS_OPEN.dec()
