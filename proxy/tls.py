"""TLS for the connections to Redis and Postgres: the one place that reads its options.

Redis: a ``rediss://`` URL turns TLS on, verified against the system CAs or ``ssl_ca_certs``,
with the server's hostname checked. The options travel in the URL query, spelled as
redis-py and LiteLLM users already write them::

    rediss://cache:6380/0?ssl_ca_certs=/tls/ca.pem&ssl_certfile=/tls/c.pem&ssl_keyfile=/tls/c.key
    ssl_cert_reqs=required|optional|none   (default required)
    ssl_check_hostname=true|false          (default true)

Settings folds its ``redis_tls`` section (REDIS_CA_FILE, REDIS_CERT_FILE, REDIS_KEY_FILE) into
these parameters, so the URL alone carries everything and every Redis client gets the same
TLS by building from it here: ``redis_ssl_context(url)`` for an asyncio connection of our
own, ``redis_from_url(url, ...)`` for redis-py.

Postgres: asyncpg reads libpq's ``sslmode`` / ``sslrootcert`` / ``sslcert`` / ``sslkey`` from
the DSN itself (``verify-full`` checks the chain and the hostname); ``check_postgres_dsn``
only catches mistakes at start-up with a clear message instead of at the first query.

Every problem is a ``ValueError`` naming the parameter; settings reports it with the field.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis

CertReqs = Literal["required", "optional", "none"]

_CERT_REQS: Final[dict[str, ssl.VerifyMode]] = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}
_BOOLS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# The TLS parameters of a Redis URL (redis-py's names); other query parameters pass through.
REDIS_TLS_PARAMS: Final = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
# libpq's names; asyncpg accepts the same.
_SSLMODES: Final = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_PG_FILES: Final = ("sslrootcert", "sslcert", "sslkey")


@dataclass(frozen=True, slots=True)
class RedisTLS:
    """How to verify a Redis server, and the client certificate to show it, if any."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_reqs: CertReqs = "required"
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """A client context; ValueError naming the file when one cannot be loaded."""
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except OSError as exc:  # ssl.SSLError is one too
            raise ValueError(f"ssl_ca_certs: cannot load {self.ca_file}: {_reason(exc)}") from exc
        # check_hostname must go off before verify_mode may become CERT_NONE.
        ctx.check_hostname = self.check_hostname and self.cert_reqs != "none"
        ctx.verify_mode = _CERT_REQS[self.cert_reqs]
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except OSError as exc:  # ssl.SSLError is one too
                raise ValueError(
                    f"ssl_certfile/ssl_keyfile: cannot load {self.cert_file}"
                    f"{' / ' + self.key_file if self.key_file else ''}: {_reason(exc)}"
                ) from exc
        return ctx

    def redis_py_kwargs(self) -> dict[str, Any]:
        """The same settings as redis-py's connection keyword arguments."""
        return {
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_check_hostname": self.check_hostname and self.cert_reqs != "none",
        }


def parse_redis_url(url: str) -> tuple[str, RedisTLS | None]:
    """The URL without its TLS parameters, and the TLS to use (None for ``redis://``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {parts.scheme!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    found = {name: value for name, value in query if name in REDIS_TLS_PARAMS}
    rest = [(name, value) for name, value in query if name not in REDIS_TLS_PARAMS]
    bare = urlunsplit(parts._replace(query=urlencode(rest)))
    if parts.scheme != "rediss":
        if found:
            names = ", ".join(sorted(found))
            raise ValueError(f"{names}: TLS options need a rediss:// URL, not {parts.scheme}://")
        return bare, None
    cert_reqs = found.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs: expected required, optional or none, got {cert_reqs!r}")
    check = found.get("ssl_check_hostname", "true").lower()
    if check not in _BOOLS:
        raise ValueError(f"ssl_check_hostname: expected true or false, got {check!r}")
    if found.get("ssl_keyfile") and not found.get("ssl_certfile"):
        raise ValueError("ssl_keyfile: given without ssl_certfile")
    tls = RedisTLS(
        ca_file=found.get("ssl_ca_certs") or None,
        cert_file=found.get("ssl_certfile") or None,
        key_file=found.get("ssl_keyfile") or None,
        cert_reqs=cast(CertReqs, cert_reqs),  # checked against _CERT_REQS above
        check_hostname=_BOOLS[check],
    )
    return bare, tls


def redis_ssl_context(url: str) -> ssl.SSLContext | None:
    """The context for an asyncio connection to ``url``; None when it is not ``rediss://``."""
    _, tls = parse_redis_url(url)
    return tls.context() if tls is not None else None


def redis_from_url(url: str, **kwargs: Any) -> Redis:
    """A redis-py asyncio client for ``url`` with its TLS options applied (same as ours)."""
    bare, tls = parse_redis_url(url)
    if tls is not None:
        kwargs.update(tls.redis_py_kwargs())
    return Redis.from_url(bare, **kwargs)


def with_redis_tls(
    url: str, *, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> str:
    """``url`` with these files as TLS parameters, except where the URL names its own."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" and (ca_file or cert_file or key_file):
        raise ValueError(f"TLS files are set (redis_tls), so use rediss://, not {parts.scheme}://")
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {name for name, _ in query}
    for name, value in (
        ("ssl_ca_certs", ca_file),
        ("ssl_certfile", cert_file),
        ("ssl_keyfile", key_file),
    ):
        if value and name not in present:
            query.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(query)))


def check_redis_url(url: str) -> None:
    """Parse ``url`` and load its TLS files now, so a mistake stops start-up clearly."""
    _, tls = parse_redis_url(url)
    if tls is not None:
        tls.context()


def check_postgres_dsn(dsn: str) -> None:
    """Check the DSN's sslmode value and that the certificate files it names are readable."""
    params = dict(parse_qsl(urlsplit(dsn).query, keep_blank_values=True))
    mode = params.get("sslmode")
    if mode is not None and mode not in _SSLMODES:
        raise ValueError(f"sslmode: expected one of {', '.join(sorted(_SSLMODES))}, got {mode!r}")
    for name in _PG_FILES:
        path = params.get(name)
        # libpq's sslrootcert=system means the system CA store, not a file.
        system = name == "sslrootcert" and path == "system"
        if path and not system and not Path(path).is_file():
            raise ValueError(f"{name}: no such file: {path}")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
