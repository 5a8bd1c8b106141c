"""``ResponseCache``: exact-match answers for chat, completions and embeddings.

The pipeline's part, per request (controls parsed once, the ``cache`` field stripped from
the bytes forwarded upstream)::

    controls = parse_controls(body_dict, headers)
    entry = await cache.lookup(alias, body_dict, controls)
    hit   -> non-stream: entry.body; stream: replay_as_stream(entry, ...)
    miss  -> non-stream: await cache.store(alias, body_dict, controls, make_entry(answer))
             stream: on a finished stream, assemble_chat_completion(chunks) -> make_entry

Embeddings are cached per input item (see ``embeddings.py``). The backend is a
``MemoryCache`` or a ``RedisCache`` (``CacheBackend``); neither ever raises for its store
being away, so the cache can only make a request faster, never fail it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy.cache.assemble import assemble_chat_completion
from proxy.cache.backend import CacheBackend
from proxy.cache.controls import NO_CONTROLS, CacheControls, parse_controls, strip_cache_field
from proxy.cache.embeddings import (
    EmbeddingLookup,
    merge_embeddings,
    missing_input_body,
    split_embeddings,
)
from proxy.cache.entry import CachedEntry, make_entry
from proxy.cache.keys import cache_key, embedding_keys
from proxy.cache.memory import MemoryCache
from proxy.cache.redis_backend import RedisCache
from proxy.cache.replay import replay_as_stream
from proxy.cache_settings import ALL_ROUTES, CacheSettings, Route, from_litellm

__all__ = [
    "NO_CONTROLS",
    "CacheBackend",
    "CacheControls",
    "CacheSettings",
    "CachedEntry",
    "EmbeddingLookup",
    "MemoryCache",
    "RedisCache",
    "ResponseCache",
    "assemble_chat_completion",
    "cache_key",
    "embedding_keys",
    "from_litellm",
    "make_entry",
    "merge_embeddings",
    "missing_input_body",
    "parse_controls",
    "replay_as_stream",
    "strip_cache_field",
]

Body = Mapping[str, Any]


class ResponseCache:
    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl: float = 3600.0,
        namespace: str | None = None,
        default_on: bool = True,
        routes: Sequence[Route] = ALL_ROUTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.ttl = ttl
        self.namespace = namespace
        self.default_on = default_on
        self.routes = frozenset(routes)
        self._clock = clock  # wall clock: entries' created_at is compared across replicas

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> ResponseCache:
        settings.check()
        backend: CacheBackend
        if settings.type == "redis":
            assert settings.redis_url is not None  # check() saw to it
            backend = RedisCache(
                settings.redis_url,
                key_prefix=settings.key_prefix,
                timeout=settings.timeout_ms / 1000,
                compress_above=settings.compress_above,
                failure_threshold=settings.failure_threshold,
                retry_interval=settings.retry_interval_seconds,
            )
        else:
            backend = MemoryCache(settings.max_bytes)
        return cls(
            backend,
            ttl=settings.ttl,
            namespace=settings.namespace,
            default_on=settings.mode == "default_on",
            routes=settings.routes,
        )

    @property
    def local(self) -> bool:
        """Whether the store is this process's memory: writing to it never waits."""
        return isinstance(self.backend, MemoryCache)

    @property
    def bypasses(self) -> int:
        """Operations the store could not serve (Redis away): the bypass metric."""
        return self.backend.bypasses

    merge_embeddings = staticmethod(merge_embeddings)

    def caches(self, route: str) -> bool:
        """Whether answers of this route (chat, completions, embeddings) are cached at all."""
        return route in self.routes

    def key(self, alias: str, body: Body, controls: CacheControls) -> str:
        """The entry key; pass it to ``lookup`` and ``store`` to derive it only once."""
        return cache_key(alias, body, namespace=controls.namespace or self.namespace)

    async def lookup(
        self, alias: str, body: Body, controls: CacheControls, *, key: str | None = None
    ) -> CachedEntry | None:
        """The cached answer, unless the request said no-cache or it is older than s-maxage."""
        if controls.no_cache or not self._uses_cache(controls):
            return None
        entry = await self.backend.get(key or self.key(alias, body, controls))
        return entry if entry is not None and self._fresh(entry, controls) else None

    async def store(
        self,
        alias: str,
        body: Body,
        controls: CacheControls,
        entry: CachedEntry,
        *,
        key: str | None = None,
    ) -> None:
        """Keep ``entry`` for the request's ttl (else the configured one), unless no-store."""
        if controls.no_store or not self._uses_cache(controls):
            return
        key = key or self.key(alias, body, controls)
        await self.backend.set(key, entry, controls.ttl or self.ttl)

    async def lookup_embeddings(
        self, alias: str, body: Body, controls: CacheControls
    ) -> EmbeddingLookup:
        """Each input item's cached vector (None where missing) and the missing indexes."""
        keys = embedding_keys(alias, body, controls.namespace or self.namespace)
        hits: list[CachedEntry | None]
        if controls.no_cache or not self._uses_cache(controls):
            hits = [None] * len(keys)
        else:
            found = await self.backend.get_many(keys)
            hits = [e if e is not None and self._fresh(e, controls) else None for e in found]
        return EmbeddingLookup(keys, hits, [i for i, hit in enumerate(hits) if hit is None])

    async def store_embeddings(
        self,
        alias: str,
        body: Body,
        controls: CacheControls,
        response: bytes,
        missing: Sequence[int] | None = None,
        *,
        keys: Sequence[str] | None = None,
    ) -> None:
        """Keep each vector of ``response``, which answers the ``missing`` items (None: all).

        ``keys`` are ``EmbeddingLookup.keys``, to derive them only once.
        """
        if controls.no_store or not self._uses_cache(controls):
            return
        keys = keys or embedding_keys(alias, body, controls.namespace or self.namespace)
        indexes = range(len(keys)) if missing is None else missing
        entries = split_embeddings(response, created_at=self._clock())
        if len(entries) != len(indexes):
            return  # not an answer to these items: storing it would misfile vectors
        items = [(keys[i], entry) for i, entry in zip(indexes, entries, strict=True)]
        await self.backend.set_many(items, controls.ttl or self.ttl)

    async def aclose(self) -> None:
        await self.backend.aclose()

    def _uses_cache(self, controls: CacheControls) -> bool:
        return self.default_on if controls.use_cache is None else controls.use_cache

    def _fresh(self, entry: CachedEntry, controls: CacheControls) -> bool:
        limit = controls.s_maxage
        return limit is None or self._clock() - entry.created_at <= limit
