"""Private TLS-only Redis and PostgreSQL servers, with certificates from a CA made per run.

Free of pytest, so the integration and e2e tests share it::

    pki = make_pki(directory)                   # CA, server and client certificates (trustme)
    with run_tls_redis(pki, auth_clients="yes") as redis:      # rediss:// only, no plain port
        url = redis.url(ca_file=pki.ca_file, cert=pki.client)
    with run_tls_postgres(pki) as pg:                          # hostssl only, plaintext refused
        dsn = pg.dsn(sslmode="verify-full", sslrootcert=pki.ca_file)

The server certificates name only ``127.0.0.1``, so ``localhost`` is a wrong hostname. The
servers' binaries come from PATH or /usr/lib/postgresql/*/bin; ``ServerUnavailableError``
says which one is missing. Running as root, PostgreSQL runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlencode

import trustme

from tests.support.processes import find_free_port

HOST = "127.0.0.1"
_START_TIMEOUT = 30.0


class ServerUnavailableError(RuntimeError):
    """A server binary (or the user to run it as) is not on this machine."""


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A CA with a server and a client certificate, and an unrelated CA that signed nothing."""

    ca_file: Path
    server: CertPair
    client: CertPair
    other_ca_file: Path


def make_pki(directory: Path) -> Pki:
    """Write a fresh CA, a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(directory / "other-ca.pem"))
    pairs = {}
    for name, identity in (("server", HOST), ("client", "llm-proxy-test-client")):
        leaf = ca.issue_cert(identity)
        pair = CertPair(directory / f"{name}.pem", directory / f"{name}.key")
        leaf.cert_chain_pems[0].write_to_path(str(pair.cert))
        leaf.private_key_pem.write_to_path(str(pair.key))
        pair.key.chmod(0o600)
        pairs[name] = pair
    return Pki(directory / "ca.pem", pairs["server"], pairs["client"], directory / "other-ca.pem")


@dataclass(frozen=True)
class TlsRedis:
    port: int

    def url(
        self,
        *,
        ca_file: Path | None,
        cert: CertPair | None = None,
        host: str = HOST,
        db: int = 0,
    ) -> str:
        """A ``rediss://`` URL with redis-py's TLS query parameters."""
        params: dict[str, str] = {}
        if ca_file is not None:
            params["ssl_ca_certs"] = str(ca_file)
        if cert is not None:
            params["ssl_certfile"] = str(cert.cert)
            params["ssl_keyfile"] = str(cert.key)
        query = f"?{urlencode(params)}" if params else ""
        return f"rediss://{host}:{self.port}/{db}{query}"


@dataclass(frozen=True)
class TlsPostgres:
    port: int

    def dsn(
        self, *, sslmode: str, sslrootcert: Path | None = None, host: str = HOST, **extra: str
    ) -> str:
        """A libpq-style DSN for the ``postgres`` database as user ``postgres``."""
        params = {"sslmode": sslmode, **extra}
        if sslrootcert is not None:
            params["sslrootcert"] = str(sslrootcert)
        return f"postgresql://postgres@{host}:{self.port}/postgres?{urlencode(params)}"


def _binary(name: str, *extra_dirs: Path) -> str:
    for directory in extra_dirs:
        if (directory / name).is_file():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise ServerUnavailableError(f"{name} is not installed (not on PATH)")
    return found


def _postgres_bindir() -> list[Path]:
    """PostgreSQL's bin directories, newest version first."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in path.parent.name.split(".") if p.isdigit())

    return sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _died(proc: subprocess.Popen[bytes], what: str, log: Path) -> RuntimeError:
    text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    return RuntimeError(f"{what} exited with status {proc.returncode} during start-up:\n{text}")


def _wait_tls_ping(port: int, pki: Pki, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until Redis answers PING over TLS (with the client certificate)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _died(proc, "redis-server", log)
        with (
            contextlib.suppress(OSError),
            socket.create_connection((HOST, port), timeout=2) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as sock,
        ):
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer on TLS port {port} in {_START_TIMEOUT}s")


@contextlib.contextmanager
def run_tls_redis(
    pki: Pki, *, auth_clients: Literal["no", "optional", "yes"] = "optional"
) -> Iterator[TlsRedis]:
    """A redis-server with only a TLS port; ``auth_clients`` as ``--tls-auth-clients``."""
    binary = _binary("redis-server")
    with tempfile.TemporaryDirectory(prefix="llm-proxy-tls-redis-") as tmp:
        port = find_free_port()
        log = Path(tmp) / "redis.log"
        argv = [
            binary,
            "--port", "0",
            "--tls-port", str(port),
            "--bind", HOST,
            "--tls-cert-file", str(pki.server.cert),
            "--tls-key-file", str(pki.server.key),
            "--tls-ca-cert-file", str(pki.ca_file),
            "--tls-auth-clients", auth_clients,
            "--save", "",
            "--appendonly", "no",
            "--dir", tmp,
            "--logfile", str(log),
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_tls_ping(port, pki, proc, log)
            yield TlsRedis(port)
        finally:
            _stop(proc, signal.SIGTERM)


@contextlib.contextmanager
def run_tls_postgres(pki: Pki) -> Iterator[TlsPostgres]:
    """A PostgreSQL cluster in a temporary directory that accepts only TLS (``hostssl``)."""
    bindirs = _postgres_bindir()
    initdb, postgres = _binary("initdb", *bindirs), _binary("postgres", *bindirs)
    ready = _binary("pg_isready", *bindirs)
    owner = _cluster_owner()
    tmp = Path(tempfile.mkdtemp(prefix="llm-proxy-tls-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        data = tmp / "data"
        # The server reads its key only if its own user owns it with mode 0600.
        for source, name in ((pki.server.cert, "server.pem"), (pki.server.key, "server.key"),
                             (pki.ca_file, "ca.pem")):  # fmt: skip
            shutil.copyfile(source, tmp / name)
            (tmp / name).chmod(0o600)
        uid = gid = None
        if owner is not None:
            uid, gid = owner.pw_uid, owner.pw_gid
            for path in (tmp, *tmp.iterdir()):
                os.chown(path, uid, gid)
        groups: list[int] | None = [] if owner is not None else None
        initdb_run = subprocess.run(
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
            cwd=tmp, capture_output=True, timeout=120, check=False,
            user=uid, group=gid, extra_groups=groups,
        )  # fmt: skip
        if initdb_run.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb_run.stderr.decode(errors='replace')}")
        # No plain "host" line: a connection without TLS finds no entry and is refused.
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n", encoding="utf-8"
        )
        port = find_free_port()
        log = tmp / "postgres.log"
        settings = {
            "listen_addresses": HOST,
            "port": str(port),
            "unix_socket_directories": str(tmp),
            "ssl": "on",
            "ssl_cert_file": str(tmp / "server.pem"),
            "ssl_key_file": str(tmp / "server.key"),
            "ssl_ca_file": str(tmp / "ca.pem"),
            "fsync": "off",
            "max_connections": "50",
        }
        argv = [postgres, "-D", str(data)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, user=uid, group=gid, extra_groups=groups,
            )  # fmt: skip
        _wait_postgres(ready, port, proc, log)
        yield TlsPostgres(port)
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # SIGINT: "fast" shutdown, sessions are cut
        shutil.rmtree(tmp, ignore_errors=True)


def _cluster_owner() -> pwd.struct_passwd | None:
    """Who runs the cluster: ``postgres`` when we are root (initdb refuses root), else us."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailableError("running as root, but there is no postgres user") from None


def _wait_postgres(ready: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _died(proc, "postgres", log)
        probe = subprocess.run(
            [ready, "-h", HOST, "-p", str(port), "-t", "1"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"postgres did not accept connections on port {port} in {_START_TIMEOUT}s")
