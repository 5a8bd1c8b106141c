"""TLS options for Redis URLs and Postgres DSNs, and how settings fold and check them."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme

from proxy.settings import ConfigError, load_settings
from proxy.tls import (
    RedisTLS,
    check_postgres_dsn,
    parse_redis_url,
    redis_from_url,
    redis_ssl_context,
    with_redis_tls,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA file and a client certificate and key, as paths."""
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    leaf = ca.issue_cert("client")
    paths = {name: str(directory / name) for name in ("ca.pem", "client.pem", "client.key")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    leaf.cert_chain_pems[0].write_to_path(paths["client.pem"])
    leaf.private_key_pem.write_to_path(paths["client.key"])
    return paths


def test_plain_url_has_no_tls() -> None:
    """redis:// means no TLS and no context."""
    assert parse_redis_url("redis://h:6379/2") == ("redis://h:6379/2", None)
    assert redis_ssl_context("redis://h:6379/0") is None


def test_rediss_verifies_the_hostname_by_default() -> None:
    """rediss:// with no options: system CAs, certificate required, hostname checked."""
    ctx = redis_ssl_context("rediss://h:6380/0")
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_tls_parameters_are_taken_out_of_the_url(certs: dict[str, str]) -> None:
    """redis-py's ssl_* parameters become RedisTLS; other parameters stay in the URL."""
    url = f"rediss://h:6380/1?ssl_ca_certs={certs['ca.pem']}&ssl_cert_reqs=optional&foo=1"
    bare, tls = parse_redis_url(url)
    assert bare == "rediss://h:6380/1?foo=1"
    assert tls == RedisTLS(ca_file=certs["ca.pem"], cert_reqs="optional")


def test_cert_reqs_none_turns_verification_off() -> None:
    """ssl_cert_reqs=none is an explicit opt-out: no chain and no hostname check."""
    ctx = redis_ssl_context("rediss://h/0?ssl_cert_reqs=none")
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_hostname_check_can_be_turned_off() -> None:
    """ssl_check_hostname=false keeps the chain check but not the name check."""
    ctx = redis_ssl_context("rediss://h/0?ssl_check_hostname=false")
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.check_hostname


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/0?ssl_ca_certs=/ca.pem", "need a rediss:// URL"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs: expected required"),
        ("rediss://h/0?ssl_check_hostname=perhaps", "ssl_check_hostname: expected true"),
        ("rediss://h/0?ssl_keyfile=/k.pem", "ssl_keyfile: given without ssl_certfile"),
        ("http://h/0", "expected a redis://"),
    ],
)
def test_bad_options_are_named(url: str, message: str) -> None:
    """Each mistake is a ValueError naming the parameter."""
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_unreadable_files_are_named(tmp_path: Path, certs: dict[str, str]) -> None:
    """A CA file that is missing or not PEM, or a bad client pair, says which file."""
    with pytest.raises(ValueError, match=r"ssl_ca_certs: cannot load .*missing\.pem"):
        redis_ssl_context(f"rediss://h/0?ssl_ca_certs={tmp_path / 'missing.pem'}")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match="ssl_ca_certs: cannot load"):
        redis_ssl_context(f"rediss://h/0?ssl_ca_certs={junk}")
    with pytest.raises(ValueError, match="ssl_certfile/ssl_keyfile: cannot load"):
        redis_ssl_context(f"rediss://h/0?ssl_certfile={certs['ca.pem']}&ssl_keyfile={junk}")


def test_client_certificate_loads(certs: dict[str, str]) -> None:
    """A CA file plus a client certificate and key make a context."""
    url = with_redis_tls(
        "rediss://h/0",
        ca_file=certs["ca.pem"],
        cert_file=certs["client.pem"],
        key_file=certs["client.key"],
    )
    assert redis_ssl_context(url) is not None


def test_with_redis_tls_keeps_what_the_url_says() -> None:
    """Folded files fill gaps only; a parameter already in the URL wins."""
    url = with_redis_tls(
        "rediss://h/0?ssl_ca_certs=/own.pem", ca_file="/x.pem", cert_file="/c.pem", key_file=None
    )
    query = parse_qs(urlsplit(url).query)
    assert query == {"ssl_ca_certs": ["/own.pem"], "ssl_certfile": ["/c.pem"]}


def test_with_redis_tls_refuses_a_plain_url() -> None:
    """TLS files next to a redis:// URL are a mistake, not silently ignored."""
    with pytest.raises(ValueError, match="use rediss://"):
        with_redis_tls("redis://h/0", ca_file="/ca.pem", cert_file=None, key_file=None)


async def test_redis_py_gets_the_same_options(certs: dict[str, str]) -> None:
    """redis_from_url hands redis-py the parsed options, hostname check on."""
    client = redis_from_url(f"rediss://h:6380/3?ssl_ca_certs={certs['ca.pem']}", socket_timeout=1)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["ssl_ca_certs"] == certs["ca.pem"]
        assert kwargs["ssl_check_hostname"] is True and kwargs["ssl_cert_reqs"] == "required"
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h", 6380, 3)
    finally:
        await client.aclose()


def test_postgres_dsn_checks(tmp_path: Path, certs: dict[str, str]) -> None:
    """sslmode must be libpq's; the certificate files it names must exist."""
    check_postgres_dsn(f"postgresql://u@h/db?sslmode=verify-full&sslrootcert={certs['ca.pem']}")
    check_postgres_dsn("postgresql://u@h/db?sslmode=verify-full&sslrootcert=system")
    check_postgres_dsn("postgresql://u@h/db")
    with pytest.raises(ValueError, match="sslmode: expected one of"):
        check_postgres_dsn("postgresql://u@h/db?sslmode=verify")
    with pytest.raises(ValueError, match="sslkey: no such file"):
        check_postgres_dsn(f"postgresql://u@h/db?sslcert={certs['ca.pem']}&sslkey={tmp_path}/k")


def test_settings_fold_redis_tls_into_every_url(tmp_path: Path, certs: dict[str, str]) -> None:
    """REDIS_CA_FILE and friends reach the limiter's URL and the cache's (which copies it)."""
    config = tmp_path / "config.yaml"
    config.write_text("cache:\n  type: redis\n")
    env = {
        "REDIS_URL": "rediss://cache:6380/0",
        "REDIS_CA_FILE": certs["ca.pem"],
        "REDIS_CERT_FILE": certs["client.pem"],
        "REDIS_KEY_FILE": certs["client.key"],
    }
    settings = load_settings(str(config), env=env)
    assert settings.cache is not None
    for url in (settings.limits.redis_url, settings.cache.redis_url):
        assert url is not None
        bare, tls = parse_redis_url(url)
        assert bare == "rediss://cache:6380/0"
        assert tls == RedisTLS(certs["ca.pem"], certs["client.pem"], certs["client.key"])


def test_settings_refuse_tls_files_with_a_plain_url(certs: dict[str, str]) -> None:
    """REDIS_CA_FILE with redis:// is a configuration error naming the field."""
    env = {"REDIS_URL": "redis://cache:6379/0", "REDIS_CA_FILE": certs["ca.pem"]}
    with pytest.raises(ConfigError, match=r"limits\.redis_url: .*use rediss://"):
        load_settings(None, env=env)


def test_settings_name_a_missing_ca_file(tmp_path: Path) -> None:
    """A CA file that is not there stops start-up with the field and the file."""
    url = f"rediss://cache:6380/0?ssl_ca_certs={tmp_path / 'gone.pem'}"
    with pytest.raises(ConfigError, match=r"limits\.redis_url: ssl_ca_certs: cannot load"):
        load_settings(None, env={"REDIS_URL": url})
    with pytest.raises(ConfigError, match=r"database\.url: sslrootcert: no such file"):
        load_settings(None, env={"DATABASE_URL": f"postgresql://u@h/db?sslrootcert={tmp_path}/x"})
