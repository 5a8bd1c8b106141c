"""``RateLimiter``: limits shared by every replica through Redis, with an explicit plan B.

Per admission: a denial cached in-process (``subject`` denied until T) rejects without a
round trip; an open allotment of the subject (allotment.py) admits without one; otherwise
one EVALSHA checks and takes everything (scripts.py), and may grant a new allotment. One
allotment is asked for per subject at a time: requests arriving meanwhile wait for that
answer instead of each asking Redis. A subject whose last ask found no room is counted one
request per call until ``allotment_seconds`` have passed. When Redis fails
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
from proxy.limits.allotment import Allotment
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
    to_nano,
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
            allotment_seconds=settings.allotment_seconds,
        )
        self._allotment_size = settings.allotment_size if settings.allotment_size > 1 else 0
        self._allotment_seconds = settings.allotment_seconds
        self._allotments: dict[str, Allotment] = {}  # subject -> the one it admits from
        self._unfinished: set[Allotment] = set()  # granted, their FINISH not sent yet
        self._asking: dict[str, asyncio.Task[Admission | Denied | None]] = {}  # subject -> ask
        self._one_by_one: dict[str, float] = {}  # subject -> no allotment asked before then
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
        admission = self.admit_now(
            subject,
            limits,
            estimated_tokens=estimated_tokens,
            estimated_cost=estimated_cost,
            request_id=request_id,
        )
        if admission is not None:
            return admission
        blocked = self._blocked.get(subject)
        if blocked is not None:
            left = blocked.until - time.monotonic()
            if left > 0 and blocked.limits == limits:
                raise denial(blocked.kind, limits, left)
            del self._blocked[subject]
        if self._allotment_size and limits.max_parallel_requests is None:
            tokens = estimated_tokens if limits.tpm_limit is not None else 0
            cost = to_nano(estimated_cost) if limits.max_budget is not None else 0
            now = time.monotonic()
            allotment = self._allotments.get(subject)
            if allotment is not None:
                admission = allotment.take(request_id, limits, tokens, cost, now)
                if admission is not None:
                    if allotment.requests <= allotment.low and not allotment.renewing:
                        self._ask_ahead(subject, allotment, estimated_tokens, estimated_cost)
                    return admission
                self._close(subject, allotment)
            if self._breaker.healthy and self._one_by_one.get(subject, 0.0) <= now:
                asking = self._asking.get(subject)
                if asking is None:
                    return await self._ask(
                        subject, limits, estimated_tokens, estimated_cost, request_id
                    )
                await asyncio.wait((asking,))  # its answer may leave room for this one too
                allotment = self._allotments.get(subject)
                if allotment is not None:
                    now = time.monotonic()
                    admission = allotment.take(request_id, limits, tokens, cost, now)
                    if admission is not None:
                        return admission
        return await self._one(subject, limits, estimated_tokens, estimated_cost, request_id)

    def admit_now(
        self,
        subject: str,
        limits: Limits,
        *,
        estimated_tokens: int,
        estimated_cost: float,
        request_id: str,
    ) -> Admission | None:
        """``admit``'s answer when it needs no round trip and no waiting: an admission from
        this process's allotment (asking for the next one when it runs low); None when only
        ``admit`` can answer. Most keyed requests end here, without a coroutine."""
        if estimated_tokens < 0 or estimated_cost < 0 or not request_id:
            check_request(estimated_tokens, estimated_cost, request_id)  # raises
        allotment = self._allotments.get(subject)
        if (
            allotment is None
            or subject in self._blocked
            or limits.max_parallel_requests is not None
        ):
            return None
        tokens = estimated_tokens if limits.tpm_limit is not None else 0
        cost = round(estimated_cost * NANO_PER_USD) if limits.max_budget is not None else 0
        admission = allotment.take(request_id, limits, tokens, cost, time.monotonic())
        if admission is not None and allotment.requests <= allotment.low and not allotment.renewing:
            self._ask_ahead(subject, allotment, estimated_tokens, estimated_cost)
        return admission

    async def _one(
        self, subject: str, limits: Limits, tokens: int, cost: float, request_id: str
    ) -> Admission:
        """One request counted in Redis on its own (or by the failure policy)."""
        if self._breaker.healthy:
            try:
                result = await self._counters.admit(
                    subject,
                    limits,
                    estimated_tokens=tokens,
                    estimated_cost=cost,
                    request_id=request_id,
                )
            except LimiterUnavailableError:
                self._breaker.trip()
            else:
                return self._admitted(subject, limits, result)
        return self._fallback(subject, limits, tokens, cost, request_id)

    def _admitted(
        self, subject: str, limits: Limits, result: Admission | Denied | None
    ) -> Admission:
        assert result is not None  # only an ask ahead of need gets no answer
        if isinstance(result, Admission):
            if limits.max_budget is not None:
                self._committed[subject] = (result.budget_window, result.committed_nano)
            return result
        raise self._deny(subject, limits, result)

    async def _ask(
        self, subject: str, limits: Limits, tokens: int, cost: float, request_id: str
    ) -> Admission:
        """Admit this request, asking for an allotment with it. The ask runs as a task of its
        own, so an allotment granted after this request was cancelled is still kept."""
        asking = asyncio.ensure_future(self._grant(subject, limits, tokens, cost, request_id))
        self._asking[subject] = asking
        try:
            result = await asyncio.shield(asking)
        except asyncio.CancelledError:
            asking.add_done_callback(self._abandoned)
            raise
        except LimiterUnavailableError:
            self._breaker.trip()
            return self._fallback(subject, limits, tokens, cost, request_id)
        return self._admitted(subject, limits, result)

    def _ask_ahead(self, subject: str, current: Allotment, tokens: int, cost: float) -> None:
        """The allotment is running low: ask for the next one now, so that the requests
        arriving when it runs out need not wait for Redis. Nothing is taken without room."""
        current.renewing = True
        if subject in self._asking or not self._breaker.healthy:
            return
        # Its id in Redis: this allotment's own and how many it has handed out (unique: each
        # allotment asks ahead once, and no request admitted from it has an entry there).
        request_id = f"{current.record.request_id}+{current.record.requests - current.requests}"
        ahead = asyncio.ensure_future(
            self._grant(subject, current.record.limits, tokens, cost, request_id, only=True)
        )
        self._asking[subject] = ahead
        ahead.add_done_callback(self._asked_ahead)

    def _asked_ahead(self, ahead: asyncio.Task[Admission | Denied | None]) -> None:
        exc = None if ahead.cancelled() else ahead.exception()
        if isinstance(exc, LimiterUnavailableError):
            self._breaker.trip()
        elif exc is not None:
            log.error("limiter: asking for the next allotment failed", exc_info=exc)

    async def _grant(
        self,
        subject: str,
        limits: Limits,
        tokens: int,
        cost: float,
        request_id: str,
        *,
        only: bool = False,
    ) -> Admission | Denied | None:
        asked = time.monotonic()
        try:
            result = await self._counters.admit(
                subject,
                limits,
                estimated_tokens=tokens,
                estimated_cost=cost,
                request_id=request_id,
                allotment=self._allotment_size,
                only=only,
            )
        finally:
            if self._asking.get(subject) is asyncio.current_task():
                del self._asking[subject]
        if result is None or isinstance(result, Denied) or not result.requests:
            if len(self._one_by_one) >= _MAX_BLOCKED:
                self._one_by_one.clear()
            self._one_by_one[subject] = asked + self._allotment_seconds
            return None if only else result
        # Admitting stops before Redis's clock passes the allotment's date (asked + seconds
        # here is no later than Redis's now + seconds) and before its budget window ends.
        deadline = asked + self._allotment_seconds
        _, window_end = limits.budget_window(time.time())
        if window_end is not None:
            deadline = min(deadline, asked + window_end / 1000 - time.time())
        allotment = Allotment(result, deadline)
        previous = self._allotments.get(subject)
        if previous is not None:
            self._close(subject, previous)  # what it has not handed out goes back
        self._allotments[subject] = allotment
        self._unfinished.add(allotment)
        asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()), self._close, subject, allotment
        )
        if only:
            if limits.max_budget is not None:
                self._committed[subject] = (result.budget_window, result.committed_nano)
            return None
        mine = allotment.take(
            request_id,
            limits,
            result.tokens // result.requests,
            result.cost_nano // result.requests,
            asked,  # as of when Redis granted it, which counted this request in it
        )
        assert mine is not None  # granted for n >= 2 requests like this one
        return mine  # _admitted notes its budget window's commitment

    def _abandoned(self, asking: asyncio.Task[Admission | Denied | None]) -> None:
        """The request that asked was cancelled: give back what it was admitted with."""
        if not asking.cancelled() and asking.exception() is None:
            result = asking.result()
            if isinstance(result, Admission):
                self.release(result)

    def _close(self, subject: str, allotment: Allotment) -> None:
        """No more admissions from ``allotment``; its FINISH goes once nothing is in flight."""
        if allotment.closed:
            return
        allotment.closed = True
        if self._allotments.get(subject) is allotment:
            del self._allotments[subject]
        if allotment.inflight == 0:
            self._finish_allotment(allotment)

    def _finish_allotment(self, allotment: Allotment) -> None:
        self._unfinished.discard(allotment)
        record = allotment.record
        record.requests, tokens, cost = allotment.used()
        self._finish(record, tokens, cost)

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
        if admission.allotment is not None:
            admission = admission.allotment.record  # the lease is the allotment's
            if admission.done:
                return False
        if admission.backend == "open" or not admission.limits.leased:
            return True
        if self._breaker.healthy:
            try:
                return await self._counters.renew(admission)
            except LimiterUnavailableError:
                self._breaker.trip()
        return True

    async def aclose(self) -> None:
        if self._asking:  # an allotment granted now must be finished below too
            await asyncio.wait(list(self._asking.values()))
        for subject, allotment in list(self._allotments.items()):
            self._close(subject, allotment)
        for allotment in list(self._unfinished):  # requests still in flight: as reserved
            self._finish_allotment(allotment)
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
        allotment = admission.allotment
        if allotment is not None:
            if allotment.settle(admission, tokens, cost) and allotment in self._unfinished:
                self._finish_allotment(allotment)
            return
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
