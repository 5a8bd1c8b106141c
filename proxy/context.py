"""AppContext: the long-lived objects of one worker process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from proxy.pipeline import Pipeline
from proxy.routing import Router
from proxy.settings import Settings
from proxy.upstream import Transport


@dataclass(slots=True)
class AppContext:
    settings: Settings
    router: Router
    transports: dict[str, Transport]
    pipeline: Pipeline
    started_at: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False

    def readiness(self) -> tuple[bytes, bool]:
        """Ready when configured and not shutting down (then the load balancer must stop)."""
        if self.draining:
            return orjson.dumps({"status": "draining"}), False
        checks = {"config": "ok", "upstream_pools": f"{len(self.transports)} up"}
        return orjson.dumps({"status": "ok", "checks": checks}), True

    async def aclose(self) -> None:
        for transport in self.transports.values():
            await transport.aclose()
