"""Virtual key material: generation, hashing, display form. Pure.

Keys are ``sk-`` + 43 url-safe characters (32 random bytes); only their SHA-256 hex digest is
stored, so a leaked database does not leak usable keys. The raw key is shown once, when it
is generated.
"""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "sk-"
_HASH = re.compile(r"[0-9a-f]{64}")


def generate_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def display_name(raw: str) -> str:
    """What lists show instead of the key: ``sk-...`` and its last four characters."""
    return f"{PREFIX}...{raw[-4:]}"


def token_hash_of(key_or_hash: str) -> str:
    """Admin calls name a key by its raw value or by its stored hash; either gives the hash."""
    if _HASH.fullmatch(key_or_hash):
        return key_or_hash
    return hash_key(key_or_hash)
