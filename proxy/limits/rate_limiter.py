"""``RateLimiter``: limits shared by every replica through Redis, with an explicit plan B.

Per admission: a denial cached in-process (``subject`` denied until T) rejects without a
round trip; otherwise one EVALSHA checks and takes everything (scripts.py). When Redis fails
or is slower than ``timeout_ms`` the circuit breaker opens and, until its background probe
gets an answer, ``failure_policy`` decides without touching the network:

- ``fail_open``: admit; ``fail_closed``: 503 ``ServiceUnavailableError``;
- ``local_share`` (default): a ``LocalLimiter`` enforces limit / ``replicas`` in-process (the
  budget share starts from the spend last seen in Redis for the window).

Settles and releases never make the request wait: their EVALSHA is queued with
``RespClient.send_later`` (it rides along with the next admission's write) and its outcome
arrives in a callback. Those that cannot reach Redis wait in a bounded queue and are replayed
when the probe succeeds; leases and TPM entries would expire by themselves anyway.
``settled()`` waits for the ones under way (shutdown, tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Final, NamedTuple

import msgspec

from proxy.errors import ServiceUnavailableError
from proxy.limits.breaker import CircuitBreaker
from proxy.limits.local import LocalLimiter
from proxy.limits.model import (
    NANO_PER_USD,
    Admission,
    LimitKind,
    Limits,
    check_request,
    counted_tokens,
    denial,
)
from proxy.limits.redis_counters import Denied, LimiterUnavailableError, RedisCounters
from proxy.limits.resp import RespClient, RespReplyError
from proxy.limits.settings import LimitsSettings

_MAX_PENDING: Final = 10_000  # settles kept while Redis is away; older ones are dropped
_MAX_BLOCKED: Final = 100_000  # cached denials before the cache is swept

log = logging.getLogger("llm_proxy.limits")


class _Blocked(NamedTuple):
    until: float  # time.monotonic()
    limits: Limits
    kind: LimitKind


class RateLimiter:
    def __init__(self, settings: LimitsSettings, *, window_seconds: float = 60.0) -> None:
        if not settings.redis_url:
            raise ValueError("RateLimiter needs limits.redis_url; use LocalLimiter without Redis")
        settings.check()
        timeout = settings.timeout_ms / 1000
        self._settings = settings
        # No retries: a retry would multiply the time a dead Redis costs.
        self._client = RespClient(settings.redis_url, timeout=timeout)
        self._counters = RedisCounters(
            self._client,
            key_prefix=settings.key_prefix,
            lease_ttl_seconds=settings.lease_ttl_seconds,
            window_seconds=window_seconds,
        )
        self._local = LocalLimiter(
            lease_ttl_seconds=settings.lease_ttl_seconds,
            token_rate_limit_type=settings.token_rate_limit_type,
            window_seconds=window_seconds,
        )
        self._breaker = CircuitBreaker(
            self._counters.ping,
            interval=settings.probe_interval_seconds,
            on_recover=self._replay,
        )
        self._blocked: dict[str, _Blocked] = {}
        self._committed: dict[str, tuple[int, int]] = {}  # subject -> (budget window, nano-USD)
        self._pending: deque[tuple[Admission, int, int]] = deque(maxlen=_MAX_PENDING)
        self._settling: set[asyncio.Future[Any]] = set()  # settles sent, outcome not known yet

    def set_redis_url(self, url: str) -> None:
        """New connection details (secret rotation): calls under way finish on the old
        connection, later ones open a new one. ValueError for an unusable URL."""
        self._client.set_redis_url(url)

    def observe_calls(self, observe: Callable[[float, bool], None]) -> None:
        """Have every Redis call's time and outcome reported (the dependency metrics)."""
        self._client.observe = observe

    @property
    def degraded(self) -> bool:
        """True while Redis is considered down and ``failure_policy`` is in force, and until
        the settles made meanwhile have been replayed (the counters are behind until then)."""
        return not self._breaker.healthy or bool(self._pending)

    @property
    def counters(self) -> RedisCounters:
        return self._counters

    def counted_tokens(self, input_tokens: int, output_tokens: int) -> int:
        return counted_tokens(self._settings.token_rate_limit_type, input_tokens, output_tokens)

    async def admit(
        self,
        subject: str,
        limits: Limits,
        *,
        estimated_tokens: int,
        estimated_cost: float,
        request_id: str,
    ) -> Admission:
        check_request(estimated_tokens, estimated_cost, request_id)
        blocked = self._blocked.get(subject)
        if blocked is not None:
            left = blocked.until - time.monotonic()
            if left > 0 and blocked.limits == limits:
                raise denial(blocked.kind, limits, left)
            del self._blocked[subject]
        if self._breaker.healthy:
            try:
                result = await self._counters.admit(
                    subject,
                    limits,
                    estimated_tokens=estimated_tokens,
                    estimated_cost=estimated_cost,
                    request_id=request_id,
                )
            except LimiterUnavailableError:
                self._breaker.trip()
            else:
                if isinstance(result, Admission):
                    if limits.max_budget is not None:
                        self._committed[subject] = (result.budget_window, result.committed_nano)
                    return result
                raise self._deny(subject, limits, result)
        return self._fallback(subject, limits, estimated_tokens, estimated_cost, request_id)

    def settle(self, admission: Admission, *, actual_tokens: int, actual_cost: float) -> None:
        """Swap the reservations for the actual use; returns at once (see the docstring)."""
        self._finish(admission, actual_tokens, round(actual_cost * NANO_PER_USD))

    def release(self, admission: Admission) -> None:
        """Give back the TPM and budget reservations and the lease; the RPM slot stays used."""
        self._finish(admission, 0, 0)

    async def settled(self) -> None:
        """Wait until every settle and release made so far has landed or been queued for replay."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def renew(self, admission: Admission) -> bool:
        """Extend the lease for a long stream; advisory (True when Redis cannot be asked)."""
        if admission.done:
            return False
        if admission.backend == "local":
            return await self._local.renew(admission)
        if admission.backend == "open" or not admission.limits.leased:
            return True
        if self._breaker.healthy:
            try:
                return await self._counters.renew(admission)
            except LimiterUnavailableError:
                self._breaker.trip()
        return True

    async def aclose(self) -> None:
        await self.settled()
        await self._breaker.aclose()
        await self._client.aclose()

    def _deny(self, subject: str, limits: Limits, denied: Denied) -> Exception:
        if denied.block_for is not None and denied.block_for > 0:
            if len(self._blocked) >= _MAX_BLOCKED:
                self._blocked.clear()
            until = time.monotonic() + denied.block_for
            self._blocked[subject] = _Blocked(until, limits, denied.kind)
        return denial(denied.kind, limits, denied.retry_after)

    def _fallback(
        self, subject: str, limits: Limits, tokens: int, cost: float, request_id: str
    ) -> Admission:
        policy = self._settings.failure_policy
        if policy == "fail_open":
            return Admission(subject, request_id, Limits(), "open")
        if policy == "fail_closed":
            raise ServiceUnavailableError(
                "The rate limiter's store is unavailable",
                code="limiter_unavailable",
                retry_after=self._settings.probe_interval_seconds,
            )
        shared = limits.share(self._settings.replicas)
        seen = self._committed.get(subject)
        current = limits.budget_window(time.time())[0]
        if limits.max_budget is not None and seen is not None and seen[0] == current:
            left = max(0.0, limits.max_budget - seen[1] / NANO_PER_USD)
            shared = msgspec.structs.replace(shared, max_budget=left / self._settings.replicas)
        return self._local.admit_now(
            subject, shared, estimated_tokens=tokens, estimated_cost=cost, request_id=request_id
        )

    def _finish(self, admission: Admission, tokens: int, cost: int) -> None:
        if admission.done:
            return
        self._blocked.pop(admission.subject, None)  # capacity may have been given back
        if admission.backend == "local":
            self._local.finish(admission, tokens, cost)
            return
        admission.done = True
        if admission.backend == "open":
            return
        if not self._breaker.healthy:
            self._pending.append((admission, tokens, cost))
            return
        sent = self._counters.finish_later(admission, tokens, cost)
        self._settling.add(sent)
        sent.add_done_callback(partial(self._finished, admission, tokens, cost))

    def _finished(
        self, admission: Admission, tokens: int, cost: int, sent: asyncio.Future[Any]
    ) -> None:
        self._settling.discard(sent)
        if sent.cancelled():
            exc: BaseException | None = LimiterUnavailableError("settle cancelled")
        else:
            exc = sent.exception()
        if exc is None:
            return
        if isinstance(exc, RespReplyError) and str(exc).startswith("NOSCRIPT"):
            # Redis lost its scripts (restart, SCRIPT FLUSH): ``finish`` loads and retries.
            retry = asyncio.ensure_future(self._finish_again(admission, tokens, cost))
            self._settling.add(retry)
            retry.add_done_callback(self._settling.discard)
            return
        log.debug("limiter: a settle did not reach Redis (%s); kept for replay", exc)
        self._breaker.trip()
        self._pending.append((admission, tokens, cost))

    async def _finish_again(self, admission: Admission, tokens: int, cost: int) -> None:
        try:
            await self._counters.finish(admission, tokens, cost)
        except LimiterUnavailableError:
            self._breaker.trip()
            self._pending.append((admission, tokens, cost))

    async def _replay(self) -> None:
        """Apply the settles that happened while Redis was away, oldest first."""
        while self._pending:
            admission, tokens, cost = self._pending[0]
            try:
                await self._counters.finish(admission, tokens, cost)
            except LimiterUnavailableError:
                self._breaker.trip()
                return
            self._pending.popleft()
