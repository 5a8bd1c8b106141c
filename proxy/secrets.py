"""Secrets from files, and the set of accepted master keys.

A secret setting may name a file instead of holding the value: ``api_key: file:/path`` in the
config, or ``NAME_FILE=/path`` beside any environment variable we read (``os.environ/NAME``
references included). The file holds the value alone; one trailing newline is dropped. The
settings loader records where each file-backed secret goes (a ``SecretFile``), so that
``proxy.rotation`` can re-read it later and apply a new value without a restart.

Errors name the setting and the path, never what the file holds.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import msgspec

FILE_PREFIX = "file:"
FILE_SUFFIX = "_FILE"

# Where a file-backed secret is applied when it changes.
Target = Literal[
    "master_key", "previous_master_key", "api_key", "database_url", "redis_url", "cache_redis_url"
]


class SecretError(ValueError):
    """A secret cannot be read; the message names the setting and the path, not the value."""


class SecretFile(msgspec.Struct, frozen=True):
    """One file-backed secret: what to call it in logs, where it lives, where it goes."""

    name: str  # the environment variable or setting path, e.g. OPENAI_API_KEY_FILE
    path: str
    target: Target
    index: int = 0  # model_list entry (api_key) or previous_master_keys entry
    digest: str = ""  # sha256 of the value as loaded, to notice a change made before start

    def with_value(self, value: str) -> SecretFile:
        return msgspec.structs.replace(self, digest=digest_of(value))


def digest_of(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def read_secret(path: str, name: str) -> str:
    """The secret in ``path`` without its trailing newline; ``SecretError`` if unusable."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SecretError(f"{name}: cannot read secret file {path}: {reason}") from None
    except UnicodeDecodeError:
        raise SecretError(f"{name}: secret file {path} is not UTF-8 text") from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value.strip():
        raise SecretError(f"{name}: secret file {path} is empty")
    return value


def file_reference(value: str) -> str | None:
    """The path of a ``file:/path`` setting, or None for any other value."""
    if value.startswith(FILE_PREFIX):
        return value[len(FILE_PREFIX) :]
    return None


def env_secret(name: str, env: Mapping[str, str]) -> tuple[str, str | None] | None:
    """``(value, path)`` for variable ``name`` or its ``NAME_FILE`` twin; None if neither.

    ``path`` is the file the value came from (None when set directly). Both set is an error:
    which one wins would be a guess.
    """
    file_name = name + FILE_SUFFIX
    direct, path = env.get(name), env.get(file_name)
    if direct and path:
        raise SecretError(f"{name} and {file_name} are both set; set only one of them")
    if path:
        return read_secret(path, file_name), path
    return None if direct is None else (direct, None)


class MasterKeys:
    """The accepted master keys: the current one and previous ones until they expire.

    ``matches`` compares the candidate with every accepted key in constant time, so neither
    which key matched nor how much of it did shows in the timing.
    """

    def __init__(
        self,
        current: str | None,
        previous: Iterable[tuple[str, float]] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._current = current.encode() if current else None
        self._previous: list[tuple[bytes, float]] = [(k.encode(), t) for k, t in previous]
        self._retired: list[tuple[bytes, float]] = []  # replaced at runtime, within grace

    @property
    def configured(self) -> bool:
        return self._current is not None

    def matches(self, key: str) -> bool:
        if self._current is None:
            return False
        given = key.encode()
        found = hmac.compare_digest(given, self._current)
        if self._previous or self._retired:
            now = self._clock()
            for candidate, expires in (*self._previous, *self._retired):
                # No short-circuit: every accepted key is compared whatever the outcome.
                same = hmac.compare_digest(given, candidate)
                found |= same and now < expires
        return found

    def rotate(self, current: str, grace_seconds: float = 0.0) -> None:
        """Make ``current`` the master key; the one it replaces stays valid for the grace."""
        old, self._current = self._current, current.encode()
        now = self._clock()
        self._retired = [(k, t) for k, t in self._retired if t > now and k != self._current]
        if old is not None and old != self._current and grace_seconds > 0:
            self._retired.append((old, now + grace_seconds))

    def replace_previous(self, index: int, key: str) -> None:
        """A listed previous key read anew from its file; its expiry stays."""
        if 0 <= index < len(self._previous):
            self._previous[index] = (key.encode(), self._previous[index][1])
