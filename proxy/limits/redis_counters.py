"""``RedisCounters``: the Redis half of ``RateLimiter``, one EVALSHA per call.

It owns nothing but the scripts and key names, and talks through the lean pipelined client
in resp.py; every failure (refused, reset, a call slower than the timeout, an error reply)
becomes ``LimiterUnavailableError`` here. Denials come back as ``Denied`` values: the
caller decides what to cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from proxy.limits import scripts
from proxy.limits.model import Admission, LimitKind, Limits, to_nano
from proxy.limits.resp import RespClient, RespReplyError, RespUnavailableError

# A budget window's counters outlive the window by the lease TTL plus this, so requests
# admitted at its very end can still settle into it.
_BUDGET_GRACE_MS: Final = 60_000
_MAX_KEY_NAMES: Final = 100_000  # subjects whose key names are remembered
# An allotment is granted only while it takes at most 1/ALLOTMENT_ROOM of what is left of
# every limit, so near a limit each request is counted in Redis on its own.
ALLOTMENT_ROOM: Final = 10


class LimiterUnavailableError(Exception):
    """Redis did not answer (refused, reset, timed out, or replied with an error)."""


class Denied(NamedTuple):
    kind: LimitKind
    retry_after: float | None  # seconds until this request could pass
    block_for: float | None  # seconds every request of the subject will be denied, if known


class RedisCounters:
    def __init__(
        self,
        client: RespClient,
        *,
        key_prefix: str,
        lease_ttl_seconds: float,
        window_seconds: float,
        allotment_seconds: float = 0.0,
    ) -> None:
        self._client = client
        self._allotment_ms = round(allotment_seconds * 1000)
        self._prefix = key_prefix
        self._lease_ttl_ms = round(lease_ttl_seconds * 1000)
        self._window_ms = round(window_seconds * 1000)
        self._admit = client.script_sha(scripts.ADMIT)
        self._finish = client.script_sha(scripts.FINISH)
        self._renew = client.script_sha(scripts.RENEW)
        # subject -> (budget window, its key names): the same six strings every request.
        self._keys: dict[str, tuple[int, list[str]]] = {}

    def keys(self, subject: str, budget_window: int) -> list[str]:
        made = self._keys.get(subject)
        if made is not None and made[0] == budget_window:
            return made[1]
        base = f"{self._prefix}{{{subject}}}:"
        keys = [
            base + "req",
            base + "tok",
            base + "tpm",
            base + "lease",
            base + "res",
            f"{base}budget:{budget_window}",
            base + "weight",
            base + "weights",
        ]
        if len(self._keys) >= _MAX_KEY_NAMES:
            self._keys.clear()
        self._keys[subject] = (budget_window, keys)
        return keys

    async def admit(
        self,
        subject: str,
        limits: Limits,
        *,
        estimated_tokens: int,
        estimated_cost: float,
        request_id: str,
        allotment: int = 0,
        only: bool = False,
    ) -> Admission | Denied | None:
        """One request's admission or, when ``allotment`` > 1 and there is room for it, an
        allotment of up to that many requests like it (``Admission.requests`` > 0). With
        ``only``, the allotment or nothing: None (or a Denied) when there is no room."""
        now = time.time()
        start, end = limits.budget_window(now)
        tokens = estimated_tokens if limits.tpm_limit is not None else 0
        cost = to_nano(estimated_cost) if limits.max_budget is not None else 0
        args = (
            request_id,
            self._window_ms,
            _or_none(limits.rpm_limit),
            _or_none(limits.tpm_limit),
            tokens,
            _or_none(limits.max_parallel_requests),
            self._lease_ttl_ms,
            -1 if limits.max_budget is None else to_nano(limits.max_budget),
            cost,
            start,
            self._budget_expiry(end),
            allotment,
            allotment_id(request_id) if allotment else "",
            ALLOTMENT_ROOM,
            self._allotment_ms,
            int(only),
        )
        reply = await self._call(self._admit, self.keys(subject, start), args)
        if reply[0] == 3:
            return None
        if reply[0] == 0:
            kind: LimitKind = reply[1].decode()
            if kind == "budget":
                until_end = None if end is None else end / 1000 - now
                # Spend alone at the budget: nothing passes before the window ends.
                block = (until_end or 60.0) if reply[3] > 0 else None
                return Denied(kind, until_end, block)
            return Denied(kind, reply[2] / 1000, reply[3] / 1000 if reply[3] >= 0 else None)
        requests = 0
        if reply[0] == 2:  # an allotment: its own entry stands for ``requests`` requests
            _, count, used, reset_ms, committed, requests = reply
            request_id = allotment_id(request_id)
            tokens *= requests
            cost *= requests
        else:
            _, count, used, reset_ms, committed = reply
        return Admission(
            subject,
            request_id,
            limits,
            "redis",
            tokens=tokens,
            cost_nano=cost,
            budget_window=start,
            remaining_requests=(limits.rpm_limit or 0) - count,
            remaining_tokens=(limits.tpm_limit or 0) - used,
            reset_requests=reset_ms / 1000,
            reset_tokens=reset_ms / 1000,
            committed_nano=committed,
            requests=requests,
        )

    async def finish(self, admission: Admission, tokens: int, cost: int) -> None:
        """Settle (actual use) or release (zeros) an admission made here."""
        await self._call(self._finish, *self._finish_call(admission, tokens, cost))

    def finish_later(self, admission: Admission, tokens: int, cost: int) -> asyncio.Future[Any]:
        """``finish`` without waiting: the EVALSHA rides along with the next write. The future
        fails with RespUnavailableError or RespReplyError (NOSCRIPT: retry with ``finish``)."""
        keys, args = self._finish_call(admission, tokens, cost)
        return self._client.send_later("EVALSHA", self._finish, len(keys), *keys, *args)

    def _finish_call(
        self, admission: Admission, tokens: int, cost: int
    ) -> tuple[list[str], tuple[str | int, ...]]:
        limits = admission.limits
        _, end = limits.budget_window(admission.budget_window / 1000)
        args = (
            admission.request_id,
            tokens if limits.tpm_limit is not None else 0,
            cost if limits.max_budget is not None else 0,
            int(limits.tpm_limit is not None),
            int(limits.leased),
            int(limits.max_budget is not None),
            self._budget_expiry(end),
            admission.requests,
        )
        return self.keys(admission.subject, admission.budget_window), args

    async def renew(self, admission: Admission) -> bool:
        base = f"{self._prefix}{{{admission.subject}}}:"
        keys = [base + "lease", base + "res"]
        reply = await self._call(self._renew, keys, (admission.request_id, self._lease_ttl_ms))
        return bool(reply)

    async def ping(self) -> None:
        await self._call(None, (), ())

    def _budget_expiry(self, end: int | None) -> int:
        return 0 if end is None else end + self._lease_ttl_ms + _BUDGET_GRACE_MS

    async def _call(self, sha: str | None, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            if sha is None:
                return await self._client.call("PING")
            return await self._client.evalsha(sha, keys, args)
        except (RespUnavailableError, RespReplyError) as exc:
            raise LimiterUnavailableError(str(exc)) from exc


def allotment_id(request_id: str) -> str:
    """The member an allotment made for ``request_id`` has in the subject's structures."""
    return "a:" + request_id


def _or_none(limit: int | None) -> int:
    return -1 if limit is None else limit
