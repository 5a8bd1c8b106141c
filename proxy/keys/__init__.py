"""Virtual keys: hashing, the per-worker cache, and the service behind auth and /key/*."""

from proxy.keys.cache import KeyCache
from proxy.keys.secrets import display_name, generate_key, hash_key, token_hash_of
from proxy.keys.service import KeyService

__all__ = ["KeyCache", "KeyService", "display_name", "generate_key", "hash_key", "token_hash_of"]
