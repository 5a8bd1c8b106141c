"""AppContext: the long-lived objects of one worker process."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.accounting import Ledger
from proxy.cache import ResponseCache
from proxy.keys import KeyService
from proxy.limits import KeyEventBus, Limiter
from proxy.pipeline import Pipeline
from proxy.routing import Router
from proxy.routing.shared_cooldowns import SharedCooldowns
from proxy.settings import Settings
from proxy.store import Store
from proxy.upstream import Transport
from proxy.usage.writer import SpendWriter

log = logging.getLogger("llm_proxy")


@dataclass(slots=True)
class AppContext:
    settings: Settings
    router: Router
    transports: dict[str, Transport]
    pipeline: Pipeline
    store: Store | None = None
    keys: KeyService | None = None
    limiter: Limiter | None = None
    events: KeyEventBus | None = None
    writer: SpendWriter | None = None
    ledger: Ledger | None = None
    cache: ResponseCache | None = None
    cooldowns: SharedCooldowns | None = None
    database_ok: bool = True
    started_at: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False

    def readiness(self) -> tuple[bytes, bool]:
        """Ready when configured and not shutting down (then the load balancer must stop).

        A database or Redis outage degrades the proxy without taking it out of rotation:
        known keys keep working from cache, usage is buffered, limits follow their policy.
        """
        if self.draining:
            return orjson.dumps({"status": "draining"}), False
        checks: dict[str, Any] = {"config": "ok", "upstream_pools": len(self.transports)}
        degraded = False
        if self.limiter is not None:
            checks["limiter"] = "degraded" if self.limiter.degraded else "ok"
            degraded |= self.limiter.degraded
        if self.writer is not None:
            checks["usage_writer"] = "ok" if self.writer.healthy else "buffering"
            checks["usage_queue"] = self.writer.queue_depth
            degraded |= not self.writer.healthy
        if self.cache is not None:
            checks["cache"] = type(self.cache.backend).__name__
        if self.cooldowns is not None:
            checks["shared_cooldowns"] = "ok" if self.cooldowns.healthy else "local only"
            degraded |= not self.cooldowns.healthy
        if self.store is not None:
            checks["database"] = "ok" if self.database_ok else "unavailable at start-up"
            degraded |= not self.database_ok
        status = "degraded" if degraded else "ok"
        return orjson.dumps({"status": status, "checks": checks}), True

    async def aclose(self) -> None:
        # Order matters: settle reservations, flush usage, then close what they write to.
        await self.pipeline.drain()  # cache writes under way
        if self.ledger is not None:
            await self.ledger.aclose()
        if self.writer is not None:
            await self.writer.aclose()
        for closer in (self.cooldowns, self.events, self.limiter, self.store, self.cache):
            if closer is not None:
                try:
                    await closer.aclose()
                except Exception:
                    log.exception("closing %s failed", type(closer).__name__)
        for transport in self.transports.values():
            await transport.aclose()
