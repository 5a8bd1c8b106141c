"""``CachedEntry``: one stored answer, and its compact byte form for networked backends.

The body is the complete non-stream answer, OpenAI shape, exactly as it is sent to a client
on a non-stream hit (a stream hit replays it as chunks, see ``replay.py``). ``created_at``
is wall-clock time, so ``s-maxage`` means the same on every replica.

Stored bytes are a flag byte and a msgpack array ``[created_at, body, prompt_tokens,
completion_tokens]``; above ``compress_above`` bytes the array is zlib-compressed (JSON
answers shrink 3 to 10 times) when that makes it smaller::

    b"\\x00" + msgpack      b"\\x01" + zlib(msgpack)
"""

from __future__ import annotations

import time
import zlib
from typing import Final

import msgspec

from proxy.wire.openai import UsageView

RAW: Final = 0
ZLIB: Final = 1
# Level 1: most of the size win for a fraction of the CPU of the default level 6.
_ZLIB_LEVEL: Final = 1


class CachedEntry(msgspec.Struct, frozen=True, array_like=True):
    created_at: float  # time.time() when the answer was stored
    body: bytes  # the complete non-stream JSON answer
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def size(self) -> int:
        """The bytes this entry holds, for byte-bounded caches."""
        return len(self.body) + 64


class CorruptEntryError(ValueError):
    """Stored bytes that are not an entry (another writer, a truncated value)."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CachedEntry)
_usage_decoder = msgspec.json.Decoder(UsageView)


def make_entry(body: bytes, *, created_at: float | None = None) -> CachedEntry:
    """An entry for a non-stream answer, its token counts read from the body's ``usage``."""
    try:
        usage = _usage_decoder.decode(body).usage
    except msgspec.DecodeError:  # an answer without a usable usage is still an answer
        usage = None
    return CachedEntry(
        created_at=time.time() if created_at is None else created_at,
        body=body,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
    )


def encode_entry(entry: CachedEntry, *, compress_above: int) -> bytes:
    packed = _encoder.encode(entry)
    if len(packed) > compress_above:
        squeezed = zlib.compress(packed, _ZLIB_LEVEL)
        if len(squeezed) < len(packed):
            return bytes((ZLIB,)) + squeezed
    return bytes((RAW,)) + packed


def decode_entry(data: bytes) -> CachedEntry:
    """The entry stored as ``data``; ``CorruptEntryError`` when it is not one."""
    if not data:
        raise CorruptEntryError("empty value")
    flag, payload = data[0], memoryview(data)[1:]
    try:
        if flag == ZLIB:
            return _decoder.decode(zlib.decompress(payload))
        if flag == RAW:
            return _decoder.decode(payload)
    except (msgspec.DecodeError, zlib.error) as exc:
        raise CorruptEntryError(str(exc)) from exc
    raise CorruptEntryError(f"unknown flag byte {flag}")
