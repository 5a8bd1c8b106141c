"""CacheSettings checks and the mapping from LiteLLM's litellm_settings.cache_params."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from proxy.cache_settings import CacheSettings, from_litellm


def litellm(**params: Any) -> dict[str, Any]:
    return {"cache": True, "cache_params": params}


def test_defaults_are_a_memory_cache_of_an_hour() -> None:
    """With no settings the cache is in memory, 64 MiB, one hour, every route."""
    settings = CacheSettings()
    settings.check()
    assert (settings.type, settings.ttl, settings.max_bytes) == ("memory", 3600.0, 64 << 20)
    assert settings.routes == ("chat", "completions", "embeddings")
    assert (settings.compress_above, settings.timeout_ms) == (2048, 50.0)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"ttl": 0}, "cache.ttl"),
        ({"max_bytes": 0}, "cache.max_bytes"),
        ({"type": "redis"}, "cache.redis_url"),
        ({"compress_above": -1}, "cache.compress_above"),
        ({"timeout_ms": 0}, "cache.timeout_ms"),
        ({"failure_threshold": 0}, "cache.failure_threshold"),
        ({"retry_interval_seconds": 0}, "cache.retry_interval_seconds"),
    ],
)
def test_check_names_the_bad_field(fields: dict[str, Any], path: str) -> None:
    """Each rule msgspec cannot express fails with the field's path."""
    with pytest.raises(ValueError, match=path):
        msgspec.convert(fields, CacheSettings).check()


@pytest.mark.parametrize("settings", [{}, {"cache": False, "cache_params": {"type": "redis"}}])
def test_caching_off_maps_to_none(settings: dict[str, Any]) -> None:
    """Without cache: true there is no cache, whatever cache_params say."""
    assert from_litellm(settings) is None


def test_local_maps_to_memory() -> None:
    """type local (LiteLLM's default) is our memory cache with its ttl and namespace."""
    settings = from_litellm(litellm(type="local", ttl=600, namespace="ns"))
    assert settings == CacheSettings(type="memory", ttl=600, namespace="ns")
    assert from_litellm({"cache": True}) == CacheSettings()


def test_redis_host_port_password_become_a_url() -> None:
    """host, port, password (quoted), username and db compose the Redis URL."""
    settings = from_litellm(
        litellm(type="redis", host="cache", port=6380, password="p@ss/word", db=2, username="u")
    )
    assert settings is not None
    assert settings.redis_url == "redis://u:p%40ss%2Fword@cache:6380/2"


def test_redis_url_and_ssl() -> None:
    """An explicit url wins; ssl: true selects rediss."""
    by_url = from_litellm(litellm(type="redis", url="redis://r:1/3", host="ignored"))
    assert by_url is not None and by_url.redis_url == "redis://r:1/3"
    tls = from_litellm(litellm(type="redis", host="r", ssl=True))
    assert tls is not None and tls.redis_url == "rediss://r:6379/0"


def test_redis_falls_back_to_environment() -> None:
    """Without connection params REDIS_URL, else REDIS_HOST/PORT/PASSWORD, are read (as LiteLLM)."""
    env = {"REDIS_HOST": "envhost", "REDIS_PORT": "7000", "REDIS_PASSWORD": "pw"}
    settings = from_litellm(litellm(type="redis"), env=env)
    assert settings is not None and settings.redis_url == "redis://:pw@envhost:7000/0"
    settings = from_litellm(litellm(type="redis"), env={"REDIS_URL": "redis://u/1", **env})
    assert settings is not None and settings.redis_url == "redis://u/1"
    with pytest.raises(ValueError, match=r"cache_params\.host"):
        from_litellm(litellm(type="redis"))


def test_backend_specific_default_ttl() -> None:
    """default_in_redis_ttl / default_in_memory_ttl apply when ttl is not set."""
    redis = from_litellm(litellm(type="redis", host="h", default_in_redis_ttl=60))
    memory = from_litellm(litellm(default_in_memory_ttl=30, default_in_redis_ttl=60))
    assert redis is not None and redis.ttl == 60
    assert memory is not None and memory.ttl == 30


def test_supported_call_types_and_mode_map() -> None:
    """Call types become routes (unknown ones warned about); mode default_off carries over."""
    warnings: list[str] = []
    settings = from_litellm(
        litellm(
            supported_call_types=["acompletion", "completion", "aembedding", "transcription"],
            mode="default_off",
        ),
        warn=warnings.append,
    )
    assert settings is not None
    assert settings.routes == ("chat", "embeddings")
    assert settings.mode == "default_off"
    assert warnings == [
        "litellm_settings.cache_params.supported_call_types: 'transcription' is not cached "
        "by llm-proxy"
    ]


def test_unsupported_params_are_warned_and_ignored() -> None:
    """Parameters we do not act on are reported once each, not fatal."""
    warnings: list[str] = []
    settings = from_litellm(
        litellm(similarity_threshold=0.8, max_size_in_memory=10), warn=warnings.append
    )
    assert settings == CacheSettings()
    assert len(warnings) == 2 and "similarity_threshold" in warnings[0]


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"type": "redis-semantic"}, "cache_params.type"),
        ({"type": "s3"}, "cache_params.type"),
        ({"ttl": "soon"}, "cache_params"),
        ({"ttl": -5}, "cache.ttl"),
        ({"supported_call_types": "completion"}, "supported_call_types"),
    ],
)
def test_bad_litellm_params_name_the_field(params: dict[str, Any], path: str) -> None:
    """A backend we do not have or a bad value is a ValueError naming where."""
    with pytest.raises(ValueError, match=path):
        from_litellm(litellm(**params))


def test_cache_params_must_be_a_mapping() -> None:
    """cache_params that is not a mapping is rejected."""
    with pytest.raises(ValueError, match="expected a mapping"):
        from_litellm({"cache": True, "cache_params": ["redis"]})
