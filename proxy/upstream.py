"""The upstream edge: one transport per deployment, errors mapped here.

``AiohttpTransport`` is the hot path: a pooled aiohttp session with its C parser, a pre-parsed
URL, no cookie jar, and timeouts built once (bench/README.md and
shared/reference/upstream-client.md hold the measurements that chose it over httpx's default
transport, ~190 µs against ~2.5 ms of CPU per request under load). ``HttpxTransport`` serves
deployments that set ``http2: true``. ``MockTransport`` answers in-process for the ``mock``
provider. Library exceptions never leave this module:

    aiohttp / httpx connect failure  -> UpstreamConnectError (502)
    timeout                          -> UpstreamTimeoutError (504)
    connection dropped, bad framing  -> UpstreamProtocolError (502)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx
import orjson
from yarl import URL

from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeoutError
from proxy.h1 import H1Pool
from proxy.providers import mock
from proxy.providers.base import Operation, UpstreamRequest
from proxy.settings import DeploymentParams


@dataclass(frozen=True, slots=True)
class Timeouts:
    total: float  # a whole non-stream request
    connect: float
    read: float  # the longest gap between two stream chunks


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None:
        """Drop the connection: the upstream sees the request abandoned."""
        ...

    def release(self) -> None:
        """Return the connection to the pool (body fully read)."""
        ...


class Transport(Protocol):
    async def send(self, req: UpstreamRequest, *, stream: bool) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


def _map_aiohttp(exc: BaseException, url: str) -> Exception:
    host = URL(url).host
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeoutError(f"the upstream {host} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"cannot connect to the upstream {host}: {exc.strerror}")
    return UpstreamProtocolError(f"the connection to the upstream {host} failed: {exc!r}")


class _AiohttpResponse:
    __slots__ = ("_resp", "_url", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, url: str) -> None:
        self._resp = resp
        self._url = url
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_aiohttp(exc, self._url) from exc
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_aiohttp(exc, self._url) from exc

    def close(self) -> None:
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


class AiohttpTransport:
    def __init__(self, params: DeploymentParams, timeouts: Timeouts) -> None:
        connector = aiohttp.TCPConnector(
            limit=params.max_connections,
            ttl_dns_cache=300,
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )
        self._plain = aiohttp.ClientTimeout(total=timeouts.total, connect=timeouts.connect)
        self._streaming = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect, sock_read=timeouts.read
        )
        self._urls: dict[str, URL] = {}

    async def send(self, req: UpstreamRequest, *, stream: bool) -> UpstreamResponse:
        url = self._urls.get(req.url)
        if url is None:
            url = self._urls[req.url] = URL(req.url, encoded=True)
        try:
            resp = await self._session.request(
                "POST",
                url,
                data=req.body,
                headers=req.headers,
                timeout=self._streaming if stream else self._plain,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_aiohttp(exc, req.url) from exc
        return _AiohttpResponse(resp, req.url)

    async def aclose(self) -> None:
        await self._session.close()


class H1Transport:
    """The default: our lean HTTP/1.1 client (proxy/h1.py), one pool per deployment."""

    def __init__(
        self,
        params: DeploymentParams,
        timeouts: Timeouts,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        self._limit = params.max_connections
        self._timeouts = timeouts
        self._on_queue = on_queue
        self._routes: dict[str, tuple[H1Pool, str]] = {}
        self._pools: dict[tuple[str, str], H1Pool] = {}

    def _route(self, url: str) -> tuple[H1Pool, str]:
        scheme, rest = url.split("://", 1)
        origin, slash, path = rest.partition("/")
        pool = self._pools.get((scheme, origin))
        if pool is None:
            pool = self._pools[(scheme, origin)] = H1Pool(
                f"{scheme}://{origin}",
                limit=self._limit,
                connect_timeout=self._timeouts.connect,
                on_queue=self._on_queue,
            )
        route = self._routes[url] = (pool, slash + path)
        return route

    async def send(self, req: UpstreamRequest, *, stream: bool) -> UpstreamResponse:
        pool, path = self._routes.get(req.url) or self._route(req.url)
        t = self._timeouts
        return await pool.request(
            path,
            req.headers,
            req.body,
            total_timeout=None if stream else t.total,
            idle_timeout=t.read if stream else None,
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


class _HttpxResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.HTTPError as exc:
            raise _map_httpx(exc) from exc
        finally:
            await self._resp.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.aiter_bytes():
                yield data
        except httpx.HTTPError as exc:
            raise _map_httpx(exc) from exc
        finally:
            await self._resp.aclose()

    def close(self) -> None:
        asyncio.ensure_future(self._resp.aclose())  # noqa: RUF006 - fire and forget close

    def release(self) -> None:
        self.close()


def _map_httpx(exc: httpx.HTTPError) -> Exception:
    host = exc.request.url.host if isinstance(exc, httpx.RequestError) else "upstream"
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(f"the upstream {host} did not answer in time")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError(f"cannot connect to the upstream {host}: {exc}")
    return UpstreamProtocolError(f"the connection to the upstream {host} failed: {exc!r}")


class HttpxTransport:
    """HTTP/2 deployments: httpx with the h2 stack (its cost is fine off the hot path)."""

    def __init__(self, params: DeploymentParams, timeouts: Timeouts) -> None:
        self._client = httpx.AsyncClient(
            http2=True,
            limits=httpx.Limits(max_connections=params.max_connections),
            timeout=httpx.Timeout(timeouts.total, connect=timeouts.connect),
        )
        self._stream_timeout = httpx.Timeout(None, connect=timeouts.connect, read=timeouts.read)

    async def send(self, req: UpstreamRequest, *, stream: bool) -> UpstreamResponse:
        request = self._client.build_request(
            "POST",
            req.url,
            content=req.body,
            headers=dict(req.headers),
            timeout=self._stream_timeout if stream else httpx.USE_CLIENT_DEFAULT,
        )
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _map_httpx(exc) from exc
        return _HttpxResponse(resp)

    async def aclose(self) -> None:
        await self._client.aclose()


class _MockResponse:
    __slots__ = ("_body", "_delay", "_events", "headers", "status")

    def __init__(self, body: bytes, events: list[bytes], delay: float) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = {"content-type": "application/json"}
        self._body = body
        self._events = events
        self._delay = delay

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, event in enumerate(self._events):
            if i and self._delay:
                await asyncio.sleep(self._delay)
            yield event

    def close(self) -> None:
        self._events = []

    def release(self) -> None:
        return None


class MockTransport:
    """In-process answers for ``mock/...`` deployments: latency and pace from the params."""

    def __init__(self, params: DeploymentParams) -> None:
        self._params = params
        self._reply = params.mock_response or mock.DEFAULT_REPLY

    async def send(self, req: UpstreamRequest, *, stream: bool) -> UpstreamResponse:
        p = self._params
        request: dict[str, Any] = orjson.loads(req.body)
        op = _operation_of(req.url)
        if p.mock_latency_ms:
            await asyncio.sleep(p.mock_latency_ms / 1000)
        model = p.upstream_model
        if stream:
            events = mock.build_stream(op, model, request, self._reply, p.mock_chunks)
            return _MockResponse(b"", events, p.mock_chunk_delay_ms / 1000)
        return _MockResponse(mock.build_response(op, model, request, self._reply), [], 0)

    async def aclose(self) -> None:
        return None


def _operation_of(url: str) -> Operation:
    path = url.split("?", 1)[0]
    for op in (Operation.CHAT, Operation.EMBEDDING, Operation.COMPLETION):
        if path.endswith("/" + op.value):
            return op
    return Operation.CHAT


def make_transport(
    params: DeploymentParams, on_queue: Callable[[int], None] | None = None
) -> Transport:
    timeouts = Timeouts(total=params.timeout, connect=params.connect_timeout, read=params.timeout)
    if params.provider == "mock":
        return MockTransport(params)
    if params.http2 or params.client == "httpx":
        return HttpxTransport(params, timeouts)
    if params.client == "aiohttp":
        return AiohttpTransport(params, timeouts)
    return H1Transport(params, timeouts, on_queue)
