"""Secret rotation without a restart: file-backed secrets re-read on SIGHUP and on change.

Each worker process runs a ``SecretWatcher``: every ``server.secrets_check_seconds`` it
stats the secret files (the resolved path, inode, mtime and size, since a Kubernetes Secret
volume swaps a symlink rather than writing the file), and on SIGHUP it re-reads them all.
A value that changed is handed to ``Rotation``, which applies it to the live objects:

* provider ``api_key``: each of the entry's deployments gets new params and headers;
* the master key: ``MasterKeys.rotate`` (the old key stays for ``master_key_grace_seconds``);
  a listed previous key is replaced in place, keeping its expiry;
* the database URL: the Postgres pool opens new connections with it (open ones stay);
* Redis URLs (``REDIS_URL`` for the limiter, key events and shared cooldowns; the cache's
  own): checked first (scheme, TLS files), then handed to every client's ``set_redis_url``.
  Calls under way finish on the old connection; later ones connect with the new details,
  and subscriptions move over (proxy/limits/resp.py, proxy/redis_handle.py). A holder
  without ``set_redis_url`` keeps its settings until a restart, and a warning says so.

One log line per rotated secret names it (and its file), never the value. A file that cannot
be read keeps the current value and logs a warning (once per change of the file).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Protocol, runtime_checkable

import msgspec

from proxy import tls
from proxy.context import AppContext
from proxy.routing import Deployment
from proxy.secrets import MasterKeys, SecretError, SecretFile, digest_of, read_secret
from proxy.settings import Settings

log = logging.getLogger("llm_proxy")

Apply = Callable[[SecretFile, str], None]
_Stamp = tuple[str, int, int, int]  # resolved path, inode, mtime (ns), size


@runtime_checkable
class RedisUrlTarget(Protocol):
    """A Redis client holder that can take new connection details for its next connection."""

    def set_redis_url(self, url: str) -> None: ...


def master_keys_from(settings: Settings) -> MasterKeys:
    """The accepted master keys: ``master_key`` and the listed previous ones (naive = UTC)."""
    previous = [
        (p.key, (p.expires if p.expires.tzinfo else p.expires.replace(tzinfo=UTC)).timestamp())
        for p in settings.previous_master_keys
    ]
    return MasterKeys(settings.master_key, previous)


@dataclass(slots=True)
class _Watched:
    file: SecretFile
    digest: str
    stamp: _Stamp | None = None  # None: not yet looked at in this process
    failed: str | None = None  # the last warning logged, not repeated every check


class SecretWatcher:
    """Re-reads file-backed secrets and hands changed values to ``apply``."""

    def __init__(self, files: Iterable[SecretFile], apply: Apply) -> None:
        self._watched = [_Watched(f, f.digest) for f in files]
        self._apply = apply

    def check(self) -> list[str]:
        """Re-read the files that changed on disk; the names of the secrets rotated."""
        return [w.file.name for w in self._watched if self._refresh(w, force=False)]

    def reload(self) -> list[str]:
        """Re-read every file (SIGHUP); the names of the secrets rotated."""
        return [w.file.name for w in self._watched if self._refresh(w, force=True)]

    async def run(self, interval: float) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.check()

    def _refresh(self, watched: _Watched, *, force: bool) -> bool:
        file = watched.file
        try:
            stamp = _stamp(file.path)
            if not force and stamp == watched.stamp:
                return False
            value = read_secret(file.path, file.name)
        except (OSError, SecretError) as exc:
            problem = _describe(file, exc)
            if force or problem != watched.failed:
                log.warning("%s; keeping the current value", problem)
            watched.failed = problem
            return False
        watched.stamp, watched.failed = stamp, None
        digest = digest_of(value)
        if digest == watched.digest:
            return False
        try:
            self._apply(file, value)
        except Exception:
            log.exception("secret %s: applying the new value failed; keeping the old", file.name)
            return False
        watched.digest = digest
        log.info("secret %s rotated (re-read from %s)", file.name, file.path)
        return True


def _stamp(path: str) -> _Stamp:
    st = os.stat(path)  # follows symlinks: the file the link points at now
    return os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size


def _describe(file: SecretFile, exc: Exception) -> str:
    if isinstance(exc, SecretError):
        return str(exc)
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return f"{file.name}: cannot read secret file {file.path}: {reason}"


class Rotation:
    """Applies a re-read secret to one worker's live objects (see the module docstring)."""

    def __init__(self, settings: Settings, ctx: AppContext, master_keys: MasterKeys) -> None:
        self._settings = settings
        self._ctx = ctx
        self._master_keys = master_keys
        deployments = ctx.router.deployments
        # By equal params: the router builds each deployment from its entry's params.
        watched = {f.index for f in settings.secret_files if f.target == "api_key"}
        self._deployments: dict[int, list[Deployment]] = {
            i: [d for d in deployments if d.params == settings.model_list[i].params]
            for i in watched
        }

    def __call__(self, file: SecretFile, value: str) -> None:
        if file.target == "master_key":
            self._master_keys.rotate(value, self._settings.master_key_grace_seconds)
        elif file.target == "previous_master_key":
            self._master_keys.replace_previous(file.index, value)
        elif file.target == "api_key":
            for deployment in self._deployments.get(file.index, ()):
                deployment.params = msgspec.structs.replace(deployment.params, api_key=value)
                deployment.headers = deployment.adapter.prepare(deployment.params)
        elif file.target == "database_url":
            set_dsn: Callable[[str], None] | None = getattr(self._ctx.store, "set_dsn", None)
            if set_dsn is None:
                log.warning("secret %s: the SQLite store has no credentials to rotate", file.name)
            else:
                set_dsn(value)
        else:
            self._redis(file, value)

    def _redis(self, file: SecretFile, value: str) -> None:
        redis_tls = self._settings.redis_tls
        if redis_tls is not None:
            value = tls.with_redis_tls(value, **msgspec.structs.asdict(redis_tls))
        # A bad URL or TLS file fails here, before any client has switched (all or none).
        tls.check_redis_url(value)
        ctx = self._ctx
        holders: Sequence[object | None] = (
            (ctx.limiter, ctx.events, ctx.cooldowns)
            if file.target == "redis_url"
            else (ctx.cache.backend if ctx.cache is not None else None,)
        )
        present = [h for h in holders if h is not None]
        taken = [h for h in present if isinstance(h, RedisUrlTarget)]
        for holder in taken:
            holder.set_redis_url(value)
        if len(taken) < len(present):
            log.warning(
                "secret %s: some Redis clients keep their connection settings until restart "
                "(their open connections stay authenticated)",
                file.name,
            )
