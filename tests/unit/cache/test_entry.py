"""CachedEntry: the compact stored form (msgpack, zlib above a threshold) and make_entry."""

from __future__ import annotations

import os

import orjson
import pytest

from proxy.cache.entry import (
    RAW,
    ZLIB,
    CachedEntry,
    CorruptEntryError,
    decode_entry,
    encode_entry,
    make_entry,
)

ANSWER = orjson.dumps(
    {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 1000}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1000, "total_tokens": 1012},
    }
)


def test_small_entry_is_stored_raw() -> None:
    """Below the threshold the value is the flag byte 0 and the msgpack array."""
    entry = CachedEntry(1.5, b'{"a":1}', 3, 4)
    data = encode_entry(entry, compress_above=2048)
    assert data[0] == RAW
    assert len(data) < 30
    assert decode_entry(data) == entry


def test_large_entry_is_compressed() -> None:
    """Above the threshold the value is flagged 1 and much smaller than the body."""
    entry = make_entry(ANSWER, created_at=10.0)
    data = encode_entry(entry, compress_above=2048)
    assert data[0] == ZLIB
    assert len(data) < len(ANSWER) // 5
    assert decode_entry(data) == entry


def test_incompressible_entry_stays_raw() -> None:
    """When zlib would not make it smaller, the value is stored raw."""
    entry = CachedEntry(1.0, os.urandom(10_000))
    data = encode_entry(entry, compress_above=100)
    assert data[0] == RAW
    assert decode_entry(data) == entry


@pytest.mark.parametrize("data", [b"", b"\x07abc", b"\x00\xc1", b"\x01not zlib"])
def test_corrupt_values_raise_one_error(data: bytes) -> None:
    """Empty, unknown flag, bad msgpack and bad zlib all raise CorruptEntryError."""
    with pytest.raises(CorruptEntryError):
        decode_entry(data)


def test_make_entry_reads_usage() -> None:
    """Token counts come from the answer's usage; created_at defaults to now."""
    entry = make_entry(ANSWER)
    assert (entry.prompt_tokens, entry.completion_tokens) == (12, 1000)
    assert entry.created_at > 1_600_000_000
    assert entry.body is ANSWER


def test_make_entry_without_usage_counts_zero() -> None:
    """An answer without usage (or not JSON at all) is still an entry, with zero tokens."""
    for body in (b'{"object":"chat.completion"}', b"not json"):
        entry = make_entry(body, created_at=1.0)
        assert (entry.prompt_tokens, entry.completion_tokens) == (0, 0)
