"""create_app(settings): the composition root, the only module that constructs things.

Each worker process builds its own AppContext (upstream pools need that worker's event loop)
in ``before_server_start`` and closes it in ``after_server_stop``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from contextlib import suppress
from typing import Any

import msgspec
from sanic import Sanic

from proxy import logs, metrics, rotation, tokens
from proxy.accounting import Ledger
from proxy.api import admin as admin_api
from proxy.api import anthropic as anthropic_api
from proxy.api import health
from proxy.api import openai as openai_api
from proxy.api.errors import OpenAIErrorHandler
from proxy.cache import RedisCache, ResponseCache
from proxy.context import AppContext
from proxy.keys import KeyCache, KeyService
from proxy.limits import LimitsSettings, RateLimiter, create_key_events, create_limiter
from proxy.pipeline import Pipeline
from proxy.routing import Router
from proxy.routing.shared_cooldowns import SharedCooldowns
from proxy.secrets import MasterKeys
from proxy.settings import Settings
from proxy.sighup import release_sighup
from proxy.store import DatabaseUnavailableError, Store, open_store
from proxy.upstream import Transport, make_transport
from proxy.usage.prices import default_prices
from proxy.usage.retention import UsagePruner
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


async def build_context(settings: Settings, master_keys: MasterKeys | None = None) -> AppContext:
    """Every long-lived object of one worker, wired together."""
    router = Router(settings)
    recorder = metrics.Recorder(router.aliases, enabled=settings.server.metrics)
    router.on_cooldown(lambda deployment, _seconds: recorder.cooldown(deployment))
    cooldowns = None
    if settings.limits.redis_url and len(router.deployments) > len(router.aliases):
        # Some alias has several deployments: cooling one down is news for every replica.
        cooldowns = SharedCooldowns(
            router,
            settings.limits.redis_url,
            key_prefix=settings.limits.key_prefix,
            timeout=settings.limits.timeout_ms / 1000,
        )
        await cooldowns.start()
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
    if recorder.enabled:
        if isinstance(limiter, RateLimiter):
            limiter.observe_calls(recorder.timer("redis", "limiter"))
        if writer is not None:
            writer.observe = recorder.timer("database", "usage_write")
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
    cache_backend = response_cache.backend if response_cache is not None else None
    if recorder.enabled and isinstance(cache_backend, RedisCache):
        cache_backend.observe = recorder.timer("redis", "cache")
    recorder.initialise(
        deployments=[d.id for d in router.deployments],
        fallbacks=[
            *settings.router.fallbacks,
            *settings.router.context_window_fallbacks,
            *settings.router.content_policy_fallbacks,
        ],
        cached_routes=response_cache.routes if response_cache is not None else (),
        dependencies=[
            *([("redis", "limiter")] if isinstance(limiter, RateLimiter) else []),
            *([("database", "usage_write")] if writer is not None else []),
            *([("redis", "cache")] if isinstance(cache_backend, RedisCache) else []),
        ],
    )
    pipeline = Pipeline(
        router,
        transports,
        recorder,
        master_keys or rotation.master_keys_from(settings),
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
        cooldowns=cooldowns,
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
        master_keys = rotation.master_keys_from(settings)
        app.ctx.proxy = await build_context(settings, master_keys)
        _watch_secrets(app, settings, master_keys)
        _start_pruner(app, settings)
        # Everything built so far lives as long as the worker (the tokenizer's rank tables
        # alone are hundreds of thousands of objects): move it out of the cyclic GC's sight,
        # so collections scan only what requests allocate (bench/README.md has the gain).
        gc.collect()
        gc.freeze()
        if s.metrics:
            app.ctx.loop_lag = metrics.start_loop_lag_monitor(asyncio.get_running_loop())
            ctx = app.ctx.proxy
            app.ctx.services = metrics.start_service_monitor(ctx.limiter, ctx.writer, ctx.router)
            if s.metrics_top_keys > 0 and ctx.keys is not None:
                app.ctx.top_keys = metrics.start_top_keys_export(ctx.keys, s.metrics_top_keys)

    @app.before_server_stop
    async def _drain(app: Sanic[Any, Any]) -> None:
        ctx: AppContext | None = getattr(app.ctx, "proxy", None)
        if ctx is not None:
            ctx.draining = True

    @app.after_server_stop
    async def _stop(app: Sanic[Any, Any]) -> None:
        pruner: asyncio.Task[None] | None = getattr(app.ctx, "pruner", None)
        if pruner is not None:  # before the store closes; a cancelled batch rolls back
            pruner.cancel()
            with suppress(asyncio.CancelledError):
                await pruner
        ctx: AppContext | None = getattr(app.ctx, "proxy", None)
        if ctx is not None:
            await ctx.aclose()
        for name in ("loop_lag", "services", "secrets", "top_keys"):
            task: asyncio.Task[None] | None = getattr(app.ctx, name, None)
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        metrics.process_exited(os.getpid())

    return app


def _watch_secrets(app: Sanic[Any, Any], settings: Settings, master_keys: MasterKeys) -> None:
    """Re-read file-backed secrets on SIGHUP, and when their files change (proxy/rotation.py)."""
    watcher = rotation.SecretWatcher(
        settings.secret_files, rotation.Rotation(settings, app.ctx.proxy, master_keys)
    )
    watcher.check()  # a file changed between loading the settings and this worker's start
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, watcher.reload)
    release_sighup()  # held since the process started (proxy/sighup.py)
    interval = settings.server.secrets_check_seconds
    if settings.secret_files and interval > 0:
        app.ctx.secrets = asyncio.create_task(watcher.run(interval))


def _start_pruner(app: Sanic[Any, Any], settings: Settings) -> None:
    """Usage retention in the background, when configured (proxy/usage/retention.py)."""
    usage = settings.usage
    store = app.ctx.proxy.store
    if usage.retention_days is None or store is None:
        return
    pruner = UsagePruner(
        store,
        retention_days=usage.retention_days,
        rollup=usage.rollup,
        batch_size=usage.prune_batch_size,
    )
    app.ctx.pruner = asyncio.create_task(pruner.run(usage.prune_interval_seconds))


async def _connection_opened(conn_info: Any) -> None:
    metrics.CONNECTIONS_OPEN.inc()


async def _connection_closed(conn_info: Any) -> None:
    metrics.CONNECTIONS_OPEN.dec()
