"""Every Redis user over rediss:// against a real TLS-only redis-server with a test CA."""

from __future__ import annotations

import uuid

import pytest
from redis.exceptions import RedisError

from proxy.app import limits_settings
from proxy.cache import CachedEntry, RedisCache
from proxy.errors import RateLimitedError
from proxy.limits import KeyEvents, Limits, LimitsSettings, RateLimiter, create_limiter
from proxy.limits.resp import RespClient, RespUnavailableError
from proxy.settings import load_settings
from proxy.tls import redis_from_url
from tests.integration.limits.polling import eventually
from tests.integration.tls.servers import Pki, TlsRedis

ENTRY = CachedEntry(1.0, b'{"id":"chatcmpl-1"}', 3, 4)


def prefix() -> str:
    return f"tls-test:{uuid.uuid4().hex[:8]}:"


def limiter(url: str, **options: object) -> RateLimiter:
    fast = {"timeout_ms": 2000, "probe_interval_seconds": 0.1}
    return RateLimiter(LimitsSettings(redis_url=url, key_prefix=prefix(), **(fast | options)))  # type: ignore[arg-type]


async def admit(lim: RateLimiter, limits: Limits, request_id: str) -> str:
    admission = await lim.admit(
        "subject", limits, estimated_tokens=0, estimated_cost=0.0, request_id=request_id
    )
    return admission.backend


async def test_rate_limiter_counts_in_redis_over_tls(tls_redis: TlsRedis, pki: Pki) -> None:
    """The limiter's own RESP client verifies the server with the CA and enforces RPM."""
    lim = limiter(tls_redis.url(ca_file=pki.ca_file))
    try:
        assert [await admit(lim, Limits(rpm_limit=2), f"r{i}") for i in range(2)] == ["redis"] * 2
        with pytest.raises(RateLimitedError):
            await admit(lim, Limits(rpm_limit=2), "r3")
        assert not lim.degraded
    finally:
        await lim.aclose()


async def test_settings_fold_the_ca_file_into_the_url(tls_redis: TlsRedis, pki: Pki) -> None:
    """REDIS_URL=rediss://... plus REDIS_CA_FILE is enough for the limiter from settings."""
    env = {"REDIS_URL": tls_redis.url(ca_file=None), "REDIS_CA_FILE": str(pki.ca_file)}
    lim = create_limiter(limits_settings(load_settings(None, env=env)))
    assert isinstance(lim, RateLimiter)
    try:
        assert await admit(lim, Limits(rpm_limit=5), "r1") == "redis"
    finally:
        await lim.aclose()


async def test_system_cas_do_not_trust_the_test_ca(tls_redis: TlsRedis) -> None:
    """Without ssl_ca_certs the server is checked against the system CAs and refused."""
    client = RespClient(tls_redis.url(ca_file=None), timeout=2)
    try:
        with pytest.raises(RespUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.call("PING")
    finally:
        await client.aclose()


async def test_wrong_ca_fails_with_a_certificate_error(tls_redis: TlsRedis, pki: Pki) -> None:
    """A server signed by another CA is refused, and the error says why."""
    client = RespClient(tls_redis.url(ca_file=pki.other_ca_file), timeout=2)
    try:
        with pytest.raises(RespUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.call("PING")
    finally:
        await client.aclose()


async def test_wrong_hostname_fails(tls_redis: TlsRedis, pki: Pki) -> None:
    """The certificate names 127.0.0.1; reaching the same server as localhost is refused."""
    client = RespClient(tls_redis.url(ca_file=pki.ca_file, host="localhost"), timeout=2)
    try:
        with pytest.raises(RespUnavailableError, match="not valid for 'localhost'"):
            await client.call("PING")
    finally:
        await client.aclose()


async def test_hostname_check_can_be_turned_off(tls_redis: TlsRedis, pki: Pki) -> None:
    """ssl_check_hostname=false accepts the CA-signed certificate under another name."""
    url = tls_redis.url(ca_file=pki.ca_file, host="localhost") + "&ssl_check_hostname=false"
    client = RespClient(url, timeout=2)
    try:
        assert await client.call("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_limiter_with_wrong_ca_degrades_instead_of_failing(
    tls_redis: TlsRedis, pki: Pki
) -> None:
    """A TLS failure is Redis being away: local counters decide, /ready shows degraded."""
    lim = limiter(tls_redis.url(ca_file=pki.other_ca_file), failure_policy="local_share")
    try:
        assert await admit(lim, Limits(rpm_limit=1), "r1") == "local"
        with pytest.raises(RateLimitedError):
            await admit(lim, Limits(rpm_limit=1), "r2")
        assert lim.degraded
    finally:
        await lim.aclose()


async def test_plaintext_to_the_tls_port_is_refused(tls_redis: TlsRedis) -> None:
    """redis:// to a TLS-only server gets no answer; the limiter degrades, it does not crash."""
    lim = limiter(
        f"redis://127.0.0.1:{tls_redis.port}/0", timeout_ms=300, failure_policy="fail_open"
    )
    try:
        assert await admit(lim, Limits(rpm_limit=1), "r1") == "open"
        assert lim.degraded
    finally:
        await lim.aclose()


async def test_key_events_pub_sub_over_tls(tls_redis: TlsRedis, pki: Pki) -> None:
    """redis-py pub/sub (key revocation) subscribes and delivers over rediss://."""
    events = KeyEvents(tls_redis.url(ca_file=pki.ca_file), key_prefix=prefix(), timeout=2)
    seen: list[str] = []
    try:
        events.subscribe(seen.append)
        await eventually(lambda: events.subscribed)
        assert await events.publish("hash-1")
        await eventually(lambda: seen == ["hash-1"])
    finally:
        await events.aclose()


async def test_key_events_with_wrong_ca_do_not_publish(tls_redis: TlsRedis, pki: Pki) -> None:
    """publish reports False (caches expire instead) when the server is not trusted."""
    events = KeyEvents(tls_redis.url(ca_file=pki.other_ca_file), key_prefix=prefix(), timeout=2)
    try:
        assert not await events.publish("hash-1")
    finally:
        await events.aclose()


async def test_response_cache_over_tls(tls_redis: TlsRedis, pki: Pki) -> None:
    """The Redis cache backend stores and finds an entry over rediss://."""
    cache = RedisCache(tls_redis.url(ca_file=pki.ca_file), key_prefix=prefix(), timeout=2)
    try:
        await cache.set("k", ENTRY, ttl=60)
        assert await cache.get("k") == ENTRY
        assert cache.bypasses == 0
    finally:
        await cache.aclose()


async def test_response_cache_with_wrong_ca_bypasses(tls_redis: TlsRedis, pki: Pki) -> None:
    """An untrusted server makes the cache a bypass, never an error."""
    cache = RedisCache(tls_redis.url(ca_file=pki.other_ca_file), key_prefix=prefix(), timeout=2)
    try:
        assert await cache.get("k") is None
        assert cache.bypasses == 1
    finally:
        await cache.aclose()


async def test_client_certificate_is_accepted(tls_redis_mutual: TlsRedis, pki: Pki) -> None:
    """With tls-auth-clients yes, both clients connect when the URL names the client cert."""
    url = tls_redis_mutual.url(ca_file=pki.ca_file, cert=pki.client)
    client = RespClient(url, timeout=2)
    redis_py = redis_from_url(url, socket_timeout=2)
    try:
        assert await client.call("PING") == b"PONG"
        assert await redis_py.ping()
    finally:
        await client.aclose()
        await redis_py.aclose()


async def test_missing_client_certificate_is_refused(tls_redis_mutual: TlsRedis, pki: Pki) -> None:
    """With tls-auth-clients yes, a client without a certificate is turned away."""
    url = tls_redis_mutual.url(ca_file=pki.ca_file)
    client = RespClient(url, timeout=2)
    redis_py = redis_from_url(url, socket_timeout=2)
    try:
        with pytest.raises(RespUnavailableError):
            await client.call("PING")
        with pytest.raises(RedisError):
            await redis_py.ping()
    finally:
        await client.aclose()
        await redis_py.aclose()
