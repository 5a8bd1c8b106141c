"""One request's flow: authenticate -> validate -> route -> upstream -> answer -> account.

No Sanic types here: the API layer hands in the body and headers and gets back a ``Reply``
(non-stream) or a ``StreamReply`` whose chunks it writes as they come. Errors are raised as
``ProxyError``s before the first byte; once a stream has started, an error becomes a final
``data: {"error": ...}`` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import orjson

from proxy import tokens
from proxy.accounting import Entry, Ledger
from proxy.cache import (
    CacheControls,
    CachedEntry,
    EmbeddingLookup,
    ResponseCache,
    assemble_chat_completion,
    make_entry,
    merge_embeddings,
    missing_input_body,
    parse_controls,
    replay_as_stream,
    strip_cache_field,
)
from proxy.errors import (
    AuthenticationError,
    InvalidRequestError,
    ModelNotFoundError,
    NoDeploymentAvailableError,
    ProxyError,
    UpstreamTimeoutError,
)
from proxy.keys import KeyService, hash_key
from proxy.logs import AccessLog
from proxy.metrics import Recorder, error_type_of
from proxy.providers import anthropic_native, anthropic_reverse
from proxy.providers._sse import sse_event
from proxy.providers.base import Operation, ParsedRequest, StreamTranslator, UpstreamRequest
from proxy.routing import Deployment, FairQueue, Router, affinity_key
from proxy.secrets import MasterKeys
from proxy.settings import RouterSettings
from proxy.store import KeyRecord
from proxy.upstream import Transport, UpstreamResponse
from proxy.usage.prices import PriceTable
from proxy.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Usage,
)

log = logging.getLogger("llm_proxy")
_T = TypeVar("_T")

ROUTES = {
    Operation.CHAT: "chat",
    Operation.COMPLETION: "completions",
    Operation.EMBEDDING: "embeddings",
}
JSON_HEADERS = {"content-type": "application/json"}
MAX_FALLBACKS = 5  # fallback aliases tried per request, at most
_CONTEXT_WINDOW_MARKERS = (
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
)
_CONTENT_POLICY_MARKERS = ("content management policy", "content_filter", "safety system")
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}
CLIENT_CLOSED = 499  # nginx's code for a client that went away; metrics only

RequestView = ChatCompletionRequest | CompletionRequest | EmbeddingRequest
_decoders: dict[Operation, msgspec.json.Decoder[Any]] = {
    Operation.CHAT: msgspec.json.Decoder(ChatCompletionRequest),
    Operation.COMPLETION: msgspec.json.Decoder(CompletionRequest),
    Operation.EMBEDDING: msgspec.json.Decoder(EmbeddingRequest),
}


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))


@dataclass(slots=True)
class StreamReply:
    chunks: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=lambda: dict(SSE_HEADERS))


@dataclass(slots=True)
class Exchange:
    """An upstream call that answered with a success status, its body still to be read."""

    deployment: Deployment
    request: UpstreamRequest
    resp: UpstreamResponse
    sent: float  # perf_counter() when it was sent
    chunks: AsyncIterator[bytes] | None = None  # a stream whose first chunk is already in


@dataclass(slots=True)
class CacheStep:
    """One request's dealings with the response cache: what it looked up and found."""

    cache: ResponseCache
    alias: str
    data: dict[str, Any]  # the decoded body: the cache key is derived from it
    controls: CacheControls
    upstream_body: bytes  # what goes upstream on a miss: no ``cache`` field, missing items
    key: str | None = None  # chat and completions: the entry's key
    hit: CachedEntry | None = None
    embeddings: EmbeddingLookup | None = None  # embeddings: per input item

    @property
    def answered(self) -> bool:
        """Whether the cache alone answers the request (nothing to ask upstream)."""
        if self.embeddings is not None:
            return not self.embeddings.missing
        return self.hit is not None


def api_key_from(headers: Mapping[str, str]) -> str | None:
    """The caller's key: ``Authorization: Bearer``, ``x-api-key`` or ``api-key``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return headers.get("x-api-key") or headers.get("api-key") or None


def master_key_actor(key: str) -> str:
    """An admin's name in the audit log: a master key's fingerprint, never the key."""
    return "master-key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def decode_request(op: Operation, body: bytes) -> RequestView:
    """Validate the fields the proxy acts on; a 400 names the bad field."""
    if not body.strip():
        raise InvalidRequestError("The request body is empty; expected a JSON object.")
    try:
        view: RequestView = _decoders[op].decode(body)
    except msgspec.ValidationError as exc:
        message, param = _describe_validation_error(str(exc))
        raise InvalidRequestError(message, param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from exc
    if isinstance(view, ChatCompletionRequest) and not view.messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    if not view.model:
        raise InvalidRequestError("'model' must not be empty.", param="model")
    return view


def _describe_validation_error(text: str) -> tuple[str, str | None]:
    if text.startswith("Object missing required field `"):
        name = text.split("`")[1]
        _, _, path = text.partition(" - at `$")
        param = (path.rstrip("`").lstrip(".") + "." + name).lstrip(".") if path else name
        return f"Missing required parameter: '{param}'.", param
    what, sep, path = text.partition(" - at `$")
    if not sep:
        return f"Invalid request: {text}", None
    param = path.rstrip("`").lstrip(".")
    return f"Invalid value for '{param}': {what[0].lower()}{what[1:]}.", param


class Pipeline:
    def __init__(
        self,
        router: Router,
        transports: Mapping[str, Transport],
        recorder: Recorder,
        master_key: str | MasterKeys | None,
        *,
        keys: KeyService | None = None,
        ledger: Ledger | None = None,
        access: AccessLog | None = None,
        retry: RouterSettings | None = None,
        cache: ResponseCache | None = None,
        queue: FairQueue | None = None,
    ) -> None:
        self._retry = retry or RouterSettings()
        self._queue = queue or FairQueue.from_settings(router.deployments, self._retry)
        # (general, context window, content policy): alias -> its fallback aliases in order
        self._fallbacks = tuple(
            dict(pairs)
            for pairs in (
                self._retry.fallbacks,
                self._retry.context_window_fallbacks,
                self._retry.content_policy_fallbacks,
            )
        )
        self._router = router
        self._transports = transports
        self._recorder = recorder
        self._access = access or AccessLog(enabled=False)
        # MasterKeys: the current key and previous ones in their grace period, rotated in place
        self._master_keys = (
            master_key if isinstance(master_key, MasterKeys) else MasterKeys(master_key)
        )
        self._keys = keys
        self._ledger = ledger or Ledger(None, None, PriceTable({}))
        self._cache = cache
        self._background: set[asyncio.Task[None]] = set()

    async def caller(self, headers: Mapping[str, str]) -> KeyRecord | None:
        """Who is asking: a virtual key's record, or None for the master key (or no auth).

        With no master key configured the proxy is open and keys are not checked.
        """
        if not self._master_keys.configured:
            return None
        key = api_key_from(headers)
        if key is None:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>' "
                "(or an 'x-api-key' / 'api-key' header)."
            )
        if self._master_keys.matches(key):
            return None
        if self._keys is None:
            raise AuthenticationError("Incorrect API key provided.")
        token_hash = hash_key(key)
        record = self._keys.known(token_hash)  # the usual answer, without a coroutine
        return record if record is not None else await self._keys.look_up(token_hash)

    def authenticate_admin(self, headers: Mapping[str, str]) -> str:
        """The admin API takes the master key only; returns who acted, for the audit log.

        The actor is ``master-key:`` and the first 12 hex digits of the key's SHA-256: it
        tells rotated keys apart without revealing either.
        """
        if not self._master_keys.configured:
            raise AuthenticationError(
                "The admin API needs a master key: set LLM_PROXY_MASTER_KEY.",
                code="admin_disabled",
            )
        key = api_key_from(headers)
        if key is None or not self._master_keys.matches(key):
            raise AuthenticationError("The admin API needs the master key.")
        return master_key_actor(key)

    async def allowed_models(self, headers: Mapping[str, str]) -> list[str]:
        record = await self.caller(headers)
        aliases = self._router.aliases
        if record is not None and record.models:
            return [a for a in aliases if a in record.models]
        return aliases

    def deployment_of(self, alias: str) -> Deployment | None:
        return self._router.pick(alias)

    def _route(
        self, entry: Entry, *, affinity: str | None = None, stream: bool = False
    ) -> Deployment:
        """The deployment for this request, noted on its account (403/404 otherwise)."""
        if entry.record is not None:
            KeyService.check_model(entry.record, entry.alias)
        deployment = self._deployment(entry.alias, affinity=affinity, stream=stream)
        self._note(entry, deployment)
        return deployment

    def _note(self, entry: Entry, deployment: Deployment) -> None:
        entry.deployment = deployment.id
        entry.provider = deployment.provider
        entry.model = deployment.upstream_model
        entry.price = deployment.price
        entry.deployment_limits = self._ledger.deployment_limits(deployment)

    async def _send(
        self,
        entry: Entry,
        alias: str,
        deployment: Deployment,
        build: Callable[[Deployment], tuple[UpstreamRequest, _T]],
        *,
        stream: bool,
        affinity: str | None = None,
    ) -> tuple[Exchange, _T]:
        """Send upstream, retrying a failure that another try may fix (429, 5xx, timeouts,
        resets, a stream's first token later than its deployment's ttft_timeout) on another
        deployment of ``alias`` where one exists, with backoff and jitter.

        Nothing has reached the client yet (a stream is retried only up to its first chunk).
        When every try fails the client gets the first error, the most telling one.
        """
        tried: list[str] = []
        first_error: ProxyError | None = None
        router = self._router
        while True:
            upstream_req, extra = build(deployment)
            if self._queue.limited(deployment.id):
                await self._take_slot(entry, deployment)
            router.begin(deployment)
            entry.upstream = deployment
            entry.attempts += 1
            sent = time.perf_counter()
            # The exchange is inline, not a helper coroutine: one await less per request.
            # A call that fails is recorded here, a good one by whoever reads it to the end.
            try:
                ttft = deployment.params.ttft_timeout if stream else None
                if ttft is None:
                    resp = await self._transports[deployment.id].send(upstream_req, stream=stream)
                    first: AsyncIterator[bytes] | None = None
                else:
                    resp, first = await self._send_within(deployment, upstream_req, ttft)
                if resp.status < 400:
                    return Exchange(deployment, upstream_req, resp, sent, first), extra
                error_body = await resp.read()
            except ProxyError as exc:
                self._upstream_done(deployment, 0, sent)
                self._release(entry)
                failure = exc
            except BaseException:
                self._upstream_done(deployment, 0, sent)
                self._release(entry)
                raise
            else:
                self._upstream_done(deployment, resp.status, sent)
                self._release(entry)
                failure = deployment.adapter.parse_error(
                    resp.status, resp.headers, error_body, deployment.id
                )
            if not (failure.retryable and (failure.status == 429 or failure.status >= 500)):
                raise failure
            first_error = first_error or failure
            router.failed(
                deployment, rate_limited=failure.status == 429, retry_after=failure.retry_after
            )
            tried.append(deployment.id)
            if len(tried) > self._retry.num_retries:
                raise first_error
            try:
                following = router.pick(alias, exclude=tried, affinity=affinity, stream=stream)
            except NoDeploymentAvailableError:
                raise first_error from None
            following = following or deployment
            delay = _backoff(
                len(tried), self._retry.retry_backoff_seconds, self._retry.max_backoff_seconds
            )
            if following is deployment and failure.retry_after:
                delay = max(delay, min(failure.retry_after, self._retry.max_backoff_seconds))
            self._recorder.retry(self._recorder.model_label(alias))
            await asyncio.sleep(delay)
            deployment = following
            self._note(entry, deployment)

    async def _send_within(
        self, deployment: Deployment, request: UpstreamRequest, ttft: float
    ) -> tuple[UpstreamResponse, AsyncIterator[bytes] | None]:
        """A stream's response and its chunks, the first one already in, or a retryable
        timeout after ``ttft`` s.

        A slow first token is the failure clients notice most, and one another deployment
        usually fixes: it fails over like a 5xx.
        """
        resp: UpstreamResponse | None = None
        try:
            async with asyncio.timeout(ttft):
                resp = await self._transports[deployment.id].send(request, stream=True)
                if resp.status >= 400:
                    return resp, None
                chunks = resp.chunks()
                first = await anext(chunks, None)
        except TimeoutError:
            if resp is not None:
                resp.close()
            raise UpstreamTimeoutError(
                f"Deployment '{deployment.id}' sent no first token within its "
                f"ttft_timeout of {ttft:g}s."
            ) from None
        return resp, chunks if first is None else _prepended(first, chunks)

    async def _take_slot(self, entry: Entry, deployment: Deployment) -> None:
        """Wait, fairly across keys, for one of the deployment's max_parallel_requests."""
        key = entry.record.token_hash if entry.record is not None else ""
        self._recorder.queue(1)
        try:
            await self._queue.acquire(deployment.id, key)
        finally:
            self._recorder.queue(-1)
        entry.slot = True

    def _window_wait(self, entry: Entry) -> Callable[[float], Coroutine[Any, Any, None]]:
        """How a request waits, in the fair queue, for its deployment's rpm/tpm window."""
        deployment = entry.deployment or ""
        key = entry.record.token_hash if entry.record is not None else ""

        async def wait(seconds: float) -> None:
            self._recorder.queue(1)
            try:
                until = asyncio.get_running_loop().time() + seconds
                await self._queue.wait_until(deployment, key, until)
            finally:
                self._recorder.queue(-1)

        return wait

    def _release(self, entry: Entry) -> None:
        """The upstream call is over: its deployment's load and queue slot are freed."""
        deployment = entry.upstream
        if deployment is None:
            return
        entry.upstream = None
        self._router.end(deployment)
        if entry.slot:
            entry.slot = False
            self._queue.release(deployment.id)

    async def _with_fallbacks(
        self,
        entry: Entry,
        error: ProxyError,
        build: Callable[[Deployment], tuple[UpstreamRequest, _T]],
        stream: bool,
        requested: Sequence[str],
    ) -> tuple[Exchange, _T]:
        """After the alias's own deployments failed: its fallback aliases, in order.

        A prompt too long for the model goes to the context-window fallbacks, a prompt the
        provider's safety system refused to the content-policy ones, any other failure that
        another model may not share (429, 5xx, timeouts) to the client's ``fallbacks`` and
        then the configured ones. A fallback the key may not use is skipped. The client gets
        the original error when all of them fail too.
        """
        chain = self._fallback_chain(entry.alias, error, requested)
        label = self._recorder.model_label(entry.alias)
        for alias in chain[:MAX_FALLBACKS]:
            record = entry.record
            if record is not None and record.models and alias not in record.models:
                continue
            try:
                deployment = self._router.pick(alias, stream=stream)
            except NoDeploymentAvailableError:
                continue
            if deployment is None:
                continue
            self._note(entry, deployment)
            try:
                exchange = await self._send(entry, alias, deployment, build, stream=stream)
            except ProxyError:
                self._recorder.fallback(label, self._recorder.model_label(alias), ok=False)
                continue
            self._recorder.fallback(label, self._recorder.model_label(alias), ok=True)
            entry.fallback = alias
            return exchange
        raise error

    def _fallback_chain(self, alias: str, error: ProxyError, requested: Sequence[str]) -> list[str]:
        if _is_context_window_error(error):
            chain = list(self._fallbacks[1].get(alias, ()))
        elif _is_content_policy_error(error):
            chain = list(self._fallbacks[2].get(alias, ()))
        elif error.retryable or isinstance(error, NoDeploymentAvailableError):
            chain = [*requested, *self._fallbacks[0].get(alias, ())]
        else:
            return []  # a request the upstream refused will be refused elsewhere too
        return [a for a in dict.fromkeys(chain) if a != alias]

    def _upstream_done(self, deployment: Deployment, status: int, sent: float) -> None:
        self._recorder.upstream(
            deployment.provider, deployment.id, status, time.perf_counter() - sent
        )

    async def run(
        self, op: Operation, body: bytes, headers: Mapping[str, str], request_id: str = ""
    ) -> Reply | StreamReply:
        """An OpenAI-shaped request (chat, completions, embeddings) to any deployment."""
        started = time.perf_counter()
        route = ROUTES[op]
        model = "other"
        entry: Entry | None = None
        self._recorder.started()
        try:
            record = await self.caller(headers)
            view = decode_request(op, body)
            model = self._recorder.model_label(view.model)
            entry = Entry(request_id=request_id, alias=view.model, record=record)
            stream = bool(getattr(view, "stream", False))
            affinity = affinity_key(body) if self._router.sticky(view.model) else None
            deployment = self._route(entry, affinity=affinity, stream=stream)
            options = getattr(view, "stream_options", None)
            wants_usage = bool(options and options.include_usage)
            requested: list[str] = []
            if b'"fallbacks"' in body:
                body, requested = take_fallbacks(body)
            step: CacheStep | None = None
            cache = self._cache
            if cache is not None and cache.caches(route):
                step = await self._look_up(cache, route, view.model, body, headers)
                if step.answered:
                    return await self._serve_cached(
                        step, op, entry, route=route, model=model, wants_usage=wants_usage
                    )
                body = step.upstream_body
            elif b'"cache"' in body:
                body = strip_cache_field(body)  # LiteLLM's per-request controls stay here
            upstream_model = deployment.upstream_model
            await self._ledger.admit(
                entry,
                prompt_tokens=lambda: count_usage(view, upstream_model, None).prompt_tokens,
                max_tokens=_max_tokens(view),
                wait=None if entry.deployment_limits is None else self._window_wait(entry),
                prompt_ceiling=lambda: _prompt_ceiling(view, body),
            )
            req = ParsedRequest(
                op=op,
                alias=view.model,
                body=body,
                stream=stream,
                client_wants_usage=wants_usage,
            )

            def build(dep: Deployment) -> tuple[UpstreamRequest, None]:
                return dep.adapter.build_request(req, dep.params, dep.urls[op], dep.headers), None

            # Let the other requests ready in this pass of the event loop reach this point
            # too before any goes upstream: under load each stage then runs for many
            # requests in a row. One worker's throughput rose ~11% in the core and ~16% with
            # a key, in-process limits and usage (bench/README.md, "Keys again: the
            # prompt's ceiling, ..."). Unloaded it costs one loop pass, a few µs.
            await asyncio.sleep(0)
            try:
                exchange, _ = await self._send(
                    entry, view.model, deployment, build, stream=stream, affinity=affinity
                )
            except ProxyError as exc:
                exchange, _ = await self._with_fallbacks(entry, exc, build, stream, requested)
            deployment = exchange.deployment
            upstream_model = deployment.upstream_model
            reply_headers = entry.headers()  # a new dict
            if exchange.request.dropped:
                reply_headers["x-llm-proxy-dropped-params"] = ",".join(exchange.request.dropped)
            if step is not None:
                reply_headers["x-cache"] = "MISS"
            if stream:
                relay = self._relay(
                    exchange=exchange,
                    translator=deployment.adapter.stream_translator(req),
                    count=lambda t: count_usage(view, upstream_model, t),
                    route=route,
                    model=model,
                    entry=entry,
                    error_event=_openai_error_event,
                    keep=None if step is None else self._stream_keeper(step),
                )
                overhead = exchange.sent - entry.started
                return StreamReply(
                    relay, {**SSE_HEADERS, **reply_headers, **_routing_headers(entry, overhead)}
                )
            raw = await self._read(entry, exchange)
            upstream_seconds = time.perf_counter() - exchange.sent
            self._router.observe(deployment, upstream_seconds, ttft=False)
            parsed = deployment.adapter.parse_response(req, raw)
            answer = parsed.body
            if step is not None:
                answer = await self._keep_answer(step, answer)
        except BaseException as exc:
            if entry is not None:
                self._release(entry)
            self._failed(exc, route, model, started, entry)
            raise
        usage = parsed.usage or count_usage(view, upstream_model, None)
        self._router.record_usage(deployment, usage.total_tokens)
        overhead = time.perf_counter() - entry.started - upstream_seconds
        reply_headers.update(_routing_headers(entry, overhead))
        self._succeeded(route, model, entry, usage, upstream_seconds)
        return Reply(200, answer, {**JSON_HEADERS, **reply_headers})

    # -- the response cache ---------------------------------------------------------------
    async def _look_up(
        self,
        cache: ResponseCache,
        route: str,
        alias: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> CacheStep:
        """Parse the request's cache controls and look its answer up (per item: embeddings)."""
        data: dict[str, Any] = orjson.loads(body)  # decode_request saw a valid JSON object
        controls = parse_controls(data, headers)
        step = CacheStep(cache, alias, data, controls, strip_cache_field(body, data))
        if route == "embeddings":
            found = step.embeddings = await cache.lookup_embeddings(alias, data, controls)
            if found.missing and len(found.missing) != len(found.keys):
                step.upstream_body = missing_input_body(data, found.missing)
        else:
            step.key = cache.key(alias, data, controls)
            step.hit = await cache.lookup(alias, data, controls, key=step.key)
        self._recorder.cache_lookup(route, hit=step.answered, bypasses=cache.bypasses)
        return step

    async def _serve_cached(
        self,
        step: CacheStep,
        op: Operation,
        entry: Entry,
        *,
        route: str,
        model: str,
        wants_usage: bool,
    ) -> Reply | StreamReply:
        """Answer from the cache: no upstream call, usage recorded at cost 0."""
        entry.deployment = entry.provider = entry.model = None
        entry.deployment_limits = None  # the deployment does no work for a hit
        if step.embeddings is not None:
            body = merge_embeddings(step.embeddings.hits, None, [], model=step.alias)
            usage = Usage(0, 0, 0)
        else:
            assert step.hit is not None  # step.answered
            hit = step.hit
            body = hit.body
            total = hit.prompt_tokens + hit.completion_tokens
            usage = Usage(hit.prompt_tokens, hit.completion_tokens, total)
        await self._ledger.admit(
            entry, prompt_tokens=lambda: usage.prompt_tokens, max_tokens=usage.completion_tokens
        )
        headers = {**entry.headers(), "x-cache": "HIT"}
        if step.hit is not None and step.data.get("stream"):
            events = replay_as_stream(
                step.hit, include_usage=wants_usage, chat=op is Operation.CHAT
            )
            replay = self._replay(events, entry, route, model, usage)
            return StreamReply(replay, {**SSE_HEADERS, **headers})
        self._succeeded(route, model, entry, usage, 0.0, cache_hit=True)
        return Reply(200, body, {**JSON_HEADERS, **headers})

    async def _replay(
        self, events: list[bytes], entry: Entry, route: str, model: str, usage: Usage
    ) -> AsyncIterator[bytes]:
        """A cached answer's stream events, accounted like a live stream once it ends."""
        recorder = self._recorder
        recorder.stream_opened()
        status = CLIENT_CLOSED
        try:
            entry.first_byte = time.perf_counter()
            recorder.first_token(model, entry.first_byte - entry.started)
            for event in events:
                yield event
            status = 200
        finally:
            recorder.stream_closed()
            total = time.perf_counter() - entry.started
            recorder.finished(route, model, status, total)
            error_type = None if status == 200 else "client_closed"
            if status == 200:
                recorder.overhead(route, total)
            else:
                recorder.error(route, "none", "client_closed")
            self._ledger.close(
                entry, status=status, usage=usage, error_type=error_type, cache_hit=True
            )
            if self._access.enabled:
                self._log(entry, route, status, total, usage=usage, cost=0.0, error_type=error_type)

    async def _keep_answer(self, step: CacheStep, answer: bytes) -> bytes:
        """Store a fresh non-stream answer; embeddings: the answer merged with cached items."""
        cache = step.cache
        found = step.embeddings
        if found is None:
            entry = make_entry(answer)
            work = cache.store(step.alias, step.data, step.controls, entry, key=step.key)
        else:
            work = cache.store_embeddings(
                step.alias, step.data, step.controls, answer, found.missing, keys=found.keys
            )
        if cache.local:
            await work  # memory: done at once, no task needed
        else:
            self._store(work)  # Redis: off the request path
        if found is None:
            return answer
        if len(found.missing) == len(found.keys):
            return answer  # nothing came from the cache
        return merge_embeddings(found.hits, answer, found.missing, model=step.alias)

    def _stream_keeper(self, step: CacheStep) -> Callable[[list[bytes], Usage], None]:
        """What stores a streamed miss once it has ended normally (never a truncated one)."""

        def keep(chunks: list[bytes], usage: Usage) -> None:
            answer = assemble_chat_completion(chunks, usage=usage)
            if answer is None:
                return
            entry = CachedEntry(time.time(), answer, usage.prompt_tokens, usage.completion_tokens)
            self._store(step.cache.store(step.alias, step.data, step.controls, entry, key=step.key))

        return keep

    def _store(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a cache write off the request path (the backends never raise for their store
        being away; anything else is a bug worth a log line, not a failed request)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("storing a cache entry failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for the cache writes under way (graceful shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def run_messages(
        self, body: bytes, headers: Mapping[str, str], request_id: str = ""
    ) -> Reply | StreamReply:
        """An Anthropic Messages request: passed through to Anthropic, translated otherwise."""
        started = time.perf_counter()
        route, model = "messages", "other"
        entry: Entry | None = None
        self._recorder.started()
        try:
            record = await self.caller(headers)
            request = anthropic_reverse.decode_messages_request(body)
            model = self._recorder.model_label(request.model)
            entry = Entry(request_id=request_id, alias=request.model, record=record)
            stream = bool(request.stream)
            affinity = affinity_key(body) if self._router.sticky(request.model) else None
            deployment = self._route(entry, affinity=affinity, stream=stream)
            upstream_model = deployment.upstream_model
            await self._ledger.admit(
                entry,
                prompt_tokens=lambda: _count_messages(body, upstream_model, None).prompt_tokens,
                max_tokens=request.max_tokens,
                wait=None if entry.deployment_limits is None else self._window_wait(entry),
            )

            def build(dep: Deployment) -> tuple[UpstreamRequest, StreamTranslator]:
                name = dep.upstream_model
                translator: StreamTranslator
                if dep.provider == "anthropic":
                    upstream_body = anthropic_native.rename_model(body, request.model, name)
                    translator = anthropic_native.AnthropicPassthrough()
                else:
                    upstream_body, _ = anthropic_reverse.messages_to_openai(body, name)
                    translator = anthropic_reverse.OpenAIToAnthropicStream(model=request.model)
                url = dep.urls[Operation.CHAT]
                return UpstreamRequest(url, dep.headers, upstream_body), translator

            await asyncio.sleep(0)  # as in ``run``: a loop pass before going upstream
            try:
                exchange, translator = await self._send(
                    entry, request.model, deployment, build, stream=stream, affinity=affinity
                )
            except ProxyError as exc:
                exchange, translator = await self._with_fallbacks(entry, exc, build, stream, ())
            deployment = exchange.deployment
            upstream_model = deployment.upstream_model
            native = deployment.provider == "anthropic"
            if stream:
                relay = self._relay(
                    exchange=exchange,
                    translator=translator,
                    count=lambda t: _count_messages(body, upstream_model, t),
                    route=route,
                    model=model,
                    entry=entry,
                    error_event=anthropic_reverse.anthropic_error_event,
                )
                routing = _routing_headers(entry, exchange.sent - entry.started)
                return StreamReply(relay, {**SSE_HEADERS, **entry.headers(), **routing})
            raw = await self._read(entry, exchange)
            upstream_seconds = time.perf_counter() - exchange.sent
            self._router.observe(deployment, upstream_seconds, ttft=False)
            usage: Usage | None
            if native:
                out, usage = raw, anthropic_native.response_usage(raw)
            else:
                out, usage = anthropic_reverse.openai_response_to_messages(raw, request.model)
        except BaseException as exc:
            if entry is not None:
                self._release(entry)
            self._failed(exc, route, model, started, entry)
            raise
        usage = usage or _count_messages(body, upstream_model, None)
        self._router.record_usage(deployment, usage.total_tokens)
        routing = _routing_headers(entry, time.perf_counter() - entry.started - upstream_seconds)
        self._succeeded(route, model, entry, usage, upstream_seconds)
        return Reply(200, out, {**JSON_HEADERS, **entry.headers(), **routing})

    async def count_message_tokens(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        await self.caller(headers)
        return anthropic_reverse.count_tokens(body)

    def _deployment(
        self, alias: str, *, affinity: str | None = None, stream: bool = False
    ) -> Deployment:
        deployment = self._router.pick(alias, affinity=affinity, stream=stream)
        if deployment is None:
            raise ModelNotFoundError(
                f"The model '{alias}' does not exist or you do not have access to it.",
                param="model",
            )
        return deployment

    async def _read(self, entry: Entry, exchange: Exchange) -> bytes:
        """A non-stream answer's body; the upstream call recorded (status 0 if cut short)."""
        deployment, resp = exchange.deployment, exchange.resp
        try:
            raw = await resp.read()
        except BaseException:
            self._upstream_done(deployment, 0, exchange.sent)
            raise
        finally:
            self._release(entry)
        self._upstream_done(deployment, resp.status, exchange.sent)
        return raw

    def _succeeded(
        self,
        route: str,
        model: str,
        entry: Entry,
        usage: Usage,
        upstream_seconds: float,
        *,
        cache_hit: bool = False,
    ) -> None:
        total = time.perf_counter() - entry.started
        recorder = self._recorder
        if not cache_hit:  # tokens the upstream processed
            recorder.tokens(model, usage.prompt_tokens, usage.completion_tokens)
        recorder.finished(route, model, 200, total)
        recorder.overhead(route, total - upstream_seconds)
        cost = self._ledger.close(entry, status=200, usage=usage, cache_hit=cache_hit)
        recorder.cost(model, cost)
        if self._access.enabled:
            self._log(entry, route, 200, total, usage=usage, cost=cost)

    def _failed(
        self, exc: BaseException, route: str, model: str, started: float, entry: Entry | None
    ) -> None:
        status = exc.status if isinstance(exc, ProxyError) else CLIENT_CLOSED
        if not isinstance(exc, ProxyError | asyncio.CancelledError):
            status = 500
        total = time.perf_counter() - started
        kind = error_type_of(exc)
        provider = entry.provider if entry is not None and entry.provider else "none"
        self._recorder.finished(route, model, status, total)
        self._recorder.error(route, provider, kind)
        if entry is not None:
            error_type = exc.type if isinstance(exc, ProxyError) else type(exc).__name__
            self._ledger.close(entry, status=status, usage=None, error_type=error_type)
        if self._access.enabled:
            if entry is None:
                self._access.log(
                    request_id=None,
                    route=route,
                    model=model,
                    provider=provider,
                    status=status,
                    latency_ms=total * 1000,
                    error_type=kind,
                )
            else:
                self._log(entry, route, status, total, error_type=kind)

    def _log(
        self,
        entry: Entry,
        route: str,
        status: int,
        total: float,
        *,
        usage: Usage | None = None,
        cost: float | None = None,
        error_type: str | None = None,
    ) -> None:
        """One access-log line from the request's account (its caller checked `enabled`)."""
        first = entry.first_byte
        self._access.log(
            request_id=entry.request_id or None,
            key_alias=entry.record.key_alias if entry.record is not None else None,
            route=route,
            model=entry.alias,
            deployment=entry.deployment,
            provider=entry.provider,
            status=status,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else None,
            cost_usd=cost,
            latency_ms=total * 1000,
            ttft_ms=None if first is None else (first - entry.started) * 1000,
            error_type=error_type,
        )

    async def _relay(
        self,
        *,
        exchange: Exchange,
        translator: StreamTranslator,
        count: Callable[[StreamTranslator], Usage],
        route: str,
        model: str,
        entry: Entry,
        error_event: Callable[[ProxyError], bytes],
        keep: Callable[[list[bytes], Usage], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """Forward each upstream chunk as it arrives; account once the stream is over.

        ``keep`` gets everything sent and the usage when the stream ended normally.
        """
        recorder = self._recorder
        resp, sent, deployment = exchange.resp, exchange.sent, exchange.deployment
        kept: list[bytes] | None = [] if keep is not None else None
        recorder.stream_opened()
        status = CLIENT_CLOSED
        error_type: str | None = "client_closed"
        kind = "client_closed"  # the metrics' and access log's error type
        upstream_end: float | None = None  # when the upstream's last chunk came
        try:
            async for data in exchange.chunks or resp.chunks():
                out = translator.feed(data)
                if out:
                    if entry.first_byte is None:
                        entry.first_byte = time.perf_counter()
                        recorder.first_token(model, entry.first_byte - entry.started)
                        self._router.observe(deployment, entry.first_byte - sent, ttft=True)
                    if kept is not None:
                        kept.append(out)
                    yield out
            upstream_end = time.perf_counter()
            tail = translator.finish()
            failure = getattr(translator, "error", None)
            if isinstance(failure, ProxyError):
                status, error_type, kind = failure.status, failure.type, error_type_of(failure)
            else:
                status, error_type = 200, None
            if tail:
                if kept is not None:
                    kept.append(tail)
                yield tail
        except ProxyError as exc:
            status, error_type, kind = exc.status, exc.type, error_type_of(exc)
            log.warning("stream on %s failed: %s", route, exc.message)
            yield error_event(exc)
        finally:
            if status == 200:
                resp.release()
            else:
                resp.close()  # the upstream sees the request abandoned
            self._release(entry)
            now = time.perf_counter()
            total = now - entry.started
            upstream_seconds = (upstream_end or now) - sent
            provider = entry.provider or "none"
            recorder.stream_closed()
            recorder.upstream(
                provider,
                entry.deployment or "none",
                resp.status if upstream_end else 0,
                upstream_seconds,
            )
            # Partial streams count too: what was streamed so far was generated and billed.
            usage = translator.account.usage or count(translator)
            self._router.record_usage(deployment, usage.total_tokens)
            recorder.tokens(model, usage.prompt_tokens, usage.completion_tokens)
            recorder.finished(route, model, status, total)
            if status == 200:
                recorder.overhead(route, total - upstream_seconds)
                if entry.first_byte is not None:
                    recorder.output_rate(model, usage.completion_tokens, now - entry.first_byte)
            else:
                recorder.error(route, provider, kind)
            cost = self._ledger.close(entry, status=status, usage=usage, error_type=error_type)
            recorder.cost(model, cost)
            if status == 200 and keep is not None and kept is not None:
                keep(kept, usage)
            if self._access.enabled:
                self._log(
                    entry,
                    route,
                    status,
                    total,
                    usage=usage,
                    cost=cost,
                    error_type=None if status == 200 else kind,
                )


def count_usage(view: RequestView, model: str, translator: StreamTranslator | None) -> Usage:
    if isinstance(view, ChatCompletionRequest):
        messages = msgspec.to_builtins(view.messages)
        prompt = tokens.count_chat_prompt_tokens(messages, model, view.tools)
    elif isinstance(view, CompletionRequest):
        prompt = tokens.count_prompt_tokens_text(_text_prompt(view.prompt), model)
    else:
        prompt = tokens.count_embedding_input_tokens(view.input, model)
    completion = 0
    if translator is not None:
        completion = tokens.count_completion_tokens(translator.completion_text(), model)
    return Usage(prompt, completion, prompt + completion)


def _count_messages(body: bytes, model: str, translator: StreamTranslator | None) -> Usage:
    prompt: int = orjson.loads(anthropic_reverse.count_tokens(body, model))["input_tokens"]
    completion = 0
    if translator is not None:
        completion = tokens.count_completion_tokens(translator.completion_text(), model)
    return Usage(prompt, completion, prompt + completion)


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def _routing_headers(entry: Entry, overhead: float) -> dict[str, str]:
    """What routing did: the deployment that answered, the upstream tries it took, the
    fallback alias when one answered, and the proxy's own time in ms (for a stream: before
    the upstream call). Cheap since proxy/api/response.py: ~1 µs a header."""
    headers = {
        "x-llm-proxy-deployment": entry.deployment or "",
        "x-llm-proxy-attempts": str(entry.attempts),
        "x-llm-proxy-overhead-ms": f"{overhead * 1000:.2f}",
    }
    if entry.fallback is not None:
        headers["x-llm-proxy-fallback"] = entry.fallback
    return headers


def take_fallbacks(body: bytes) -> tuple[bytes, list[str]]:
    """The body without LiteLLM's per-request ``fallbacks`` list, and that list (a 400 when
    it is not a list of model names)."""
    data = orjson.loads(body)
    if not isinstance(data, dict) or "fallbacks" not in data:
        return body, []
    requested = data.pop("fallbacks")
    if requested is None:
        requested = []
    if not isinstance(requested, list) or not all(isinstance(m, str) for m in requested):
        raise InvalidRequestError(
            "Invalid value for 'fallbacks': expected a list of model names.", param="fallbacks"
        )
    return orjson.dumps(data), requested


def _is_context_window_error(error: ProxyError) -> bool:
    """The upstream said the prompt does not fit the model (OpenAI's code, Anthropic's and
    other providers' wording)."""
    if error.code == "context_length_exceeded":
        return True
    text = error.message.lower()
    return error.status == 400 and any(m in text for m in _CONTEXT_WINDOW_MARKERS)


def _is_content_policy_error(error: ProxyError) -> bool:
    """The provider's safety system refused the prompt."""
    if error.code in ("content_policy_violation", "content_filter"):
        return True
    text = error.message.lower()
    return error.status == 400 and any(m in text for m in _CONTENT_POLICY_MARKERS)


async def _prepended(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for data in rest:
        yield data


def _prompt_ceiling(view: RequestView, body: bytes) -> int | None:
    """``tokens.prompt_token_ceiling`` of a decoded request."""
    if not isinstance(view, ChatCompletionRequest):
        return tokens.prompt_token_ceiling(body, 0, parts=False, tools=False)
    parts = False
    for message in view.messages:
        if message.content is not None and type(message.content) is not str:
            parts = True
            break
    return tokens.prompt_token_ceiling(
        body, len(view.messages), parts=parts, tools=view.tools is not None
    )


def _max_tokens(view: RequestView) -> int | None:
    if isinstance(view, ChatCompletionRequest):
        return view.max_completion_tokens or view.max_tokens
    if isinstance(view, CompletionRequest):
        return view.max_tokens
    return 0  # embeddings generate nothing


def _openai_error_event(exc: ProxyError) -> bytes:
    return sse_event(exc.to_json())


def _text_prompt(prompt: Any) -> str | list[str]:
    if isinstance(prompt, str):
        return prompt
    return [p for p in prompt if isinstance(p, str)]
