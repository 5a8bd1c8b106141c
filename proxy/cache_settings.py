"""Settings of the response cache (the ``cache`` section of the config) and the mapping from
LiteLLM's ``litellm_settings.cache`` / ``cache_params``.

A module of its own, outside ``proxy.cache``, so that ``proxy.settings`` can use it without
importing the cache's backends (which import the providers, which import the settings).

::

    cache:                       # absent: no response cache
      type: redis                # memory (per worker process) | redis (shared)
      redis_url: redis://cache:6379/0   # default: limits.redis_url / REDIS_URL
      ttl: 3600
      namespace: prod

LiteLLM's spelling maps onto it with ``from_litellm(raw["litellm_settings"])``::

    litellm_settings:
      cache: true
      cache_params: {type: redis, host: cache, port: 6379, password: ..., ttl: 600}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal
from urllib.parse import quote

import msgspec

Route = Literal["chat", "completions", "embeddings"]
ALL_ROUTES: Final[tuple[Route, ...]] = ("chat", "completions", "embeddings")


class CacheSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Literal["memory", "redis"] = "memory"
    ttl: float = 3600.0  # seconds an answer is kept unless the request's cache.ttl says otherwise
    namespace: str | None = None  # key prefix partitioning the cache; a request may replace it
    # default_off: only requests sending cache: {"use-cache": true} use the cache
    mode: Literal["default_on", "default_off"] = "default_on"
    routes: tuple[Route, ...] = ALL_ROUTES
    # memory
    max_bytes: int = 64 * 1024 * 1024  # per worker process
    # redis
    redis_url: str | None = None
    key_prefix: str = "llm-proxy:cache:"
    compress_above: int = 2048  # bytes; larger values are stored zlib-compressed
    timeout_ms: float = 50.0  # per operation; slower means a bypass, never an error
    failure_threshold: int = 3  # failures in a row that stop the attempts
    retry_interval_seconds: float = 1.0  # while stopped, how often one PING asks again

    def check(self) -> None:
        """Rules msgspec cannot express; raises ValueError naming the field."""
        if self.ttl <= 0:
            raise ValueError("cache.ttl: must be positive")
        if self.max_bytes <= 0:
            raise ValueError("cache.max_bytes: must be positive")
        if self.type == "redis" and not self.redis_url:
            raise ValueError("cache.redis_url: required when cache.type is redis")
        if self.compress_above < 0:
            raise ValueError("cache.compress_above: must not be negative")
        if self.timeout_ms <= 0:
            raise ValueError("cache.timeout_ms: must be positive")
        if self.failure_threshold < 1:
            raise ValueError("cache.failure_threshold: must be at least 1")
        if self.retry_interval_seconds <= 0:
            raise ValueError("cache.retry_interval_seconds: must be positive")


_WHERE: Final = "litellm_settings.cache_params"
_TYPES: Final = {"local": "memory", "redis": "redis"}
_CALL_TYPES: Final[dict[str, Route]] = {
    "completion": "chat",
    "acompletion": "chat",
    "text_completion": "completions",
    "atext_completion": "completions",
    "embedding": "embeddings",
    "aembedding": "embeddings",
}
_REDIS_PARTS: Final = ("host", "port", "password", "username", "db", "ssl")
_HANDLED: Final = frozenset(
    {"type", "ttl", "namespace", "mode", "supported_call_types", "url", "redis_url"}
    | {"default_in_memory_ttl", "default_in_redis_ttl", *_REDIS_PARTS}
)


def from_litellm(
    litellm_settings: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> CacheSettings | None:
    """Our settings for LiteLLM's ``cache: true`` + ``cache_params``; None when caching is off.

    Redis connection details come from ``url``/``redis_url``, else host/port/password/
    username/db/ssl, else (as LiteLLM does) ``REDIS_URL`` or ``REDIS_HOST``/``REDIS_PORT``/
    ``REDIS_PASSWORD`` in ``env``. ``os.environ/NAME`` values must be resolved before.
    Parameters we do not support are reported through ``warn`` and ignored; a backend type
    we do not have is a ValueError naming the field.
    """
    if not litellm_settings.get("cache"):
        return None
    params = litellm_settings.get("cache_params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{_WHERE}: expected a mapping")
    env = env or {}
    for name in params:
        if name not in _HANDLED and warn is not None:
            warn(f"{_WHERE}.{name} is not supported by llm-proxy; ignored")

    kind = str(params.get("type", "local"))
    if kind not in _TYPES:
        raise ValueError(f"{_WHERE}.type: {kind!r} is not supported (use local or redis)")
    fields: dict[str, Any] = {"type": _TYPES[kind]}
    backend_ttl = "default_in_redis_ttl" if kind == "redis" else "default_in_memory_ttl"
    ttl = params.get("ttl", params.get(backend_ttl))
    if ttl is not None:
        fields["ttl"] = ttl
    for name in ("namespace", "mode"):
        if params.get(name) is not None:
            fields[name] = params[name]
    if "supported_call_types" in params:
        fields["routes"] = _routes(params["supported_call_types"], warn)
    if kind == "redis":
        fields["redis_url"] = _redis_url(params, env)
    try:
        settings = msgspec.convert(fields, CacheSettings)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{_WHERE}: {exc}") from exc
    settings.check()
    return settings


def _routes(call_types: Any, warn: Callable[[str], None] | None) -> tuple[Route, ...]:
    if not isinstance(call_types, list):
        raise ValueError(f"{_WHERE}.supported_call_types: expected a list")
    routes: list[Route] = []
    for call_type in call_types:
        route = _CALL_TYPES.get(str(call_type))
        if route is None:
            if warn is not None:
                warn(f"{_WHERE}.supported_call_types: {call_type!r} is not cached by llm-proxy")
        elif route not in routes:
            routes.append(route)
    return tuple(routes)


def _redis_url(params: Mapping[str, Any], env: Mapping[str, str]) -> str:
    url = params.get("url") or params.get("redis_url")
    if url:
        return str(url)
    if not any(params.get(name) is not None for name in _REDIS_PARTS):
        if env.get("REDIS_URL"):
            return env["REDIS_URL"]
        params = {
            "host": env.get("REDIS_HOST"),
            "port": env.get("REDIS_PORT"),
            "password": env.get("REDIS_PASSWORD"),
        }
    host = params.get("host")
    if not host:
        raise ValueError(f"{_WHERE}.host: required for type redis (or url, or REDIS_HOST)")
    scheme = "rediss" if str(params.get("ssl", "")).lower() in ("true", "1") else "redis"
    user = quote(str(params["username"]), safe="") if params.get("username") else ""
    password = quote(str(params["password"]), safe="") if params.get("password") else ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = params.get("port") or 6379
    return f"{scheme}://{auth}{host}:{port}/{params.get('db') or 0}"
