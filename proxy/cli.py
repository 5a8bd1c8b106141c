"""``llm-proxy migrate`` and ``llm-proxy keys ...``: the same service code as the admin API.

``migrate`` is what a Kubernetes Job runs before a rollout; it is idempotent and safe next
to replicas that migrate at start-up (the schema change is serialised by an advisory lock).
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from proxy.keys import KeyCache, KeyService
from proxy.settings import Settings
from proxy.store import DatabaseError, DatabaseUnavailableError, Store, open_store
from proxy.wire.admin import GenerateKeyRequest

_encoder = msgspec.json.Encoder()


def _store(settings: Settings) -> Store:
    db = settings.database
    return open_store(
        db.url, sqlite_path=db.sqlite_path, schema=db.schema, pool_min_size=0, pool_max_size=1
    )


def _print(data: object) -> None:
    sys.stdout.write(_encoder.encode(msgspec.to_builtins(data)).decode() + "\n")


async def migrate(settings: Settings) -> int:
    try:
        async with _store(settings) as store:
            version = await store.migrate()
    except (DatabaseError, DatabaseUnavailableError) as exc:
        sys.stderr.write(f"llm-proxy: migration failed: {exc}\n")
        return 1
    sys.stdout.write(f"schema at version {version}\n")
    return 0


def add_key_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="key_command", required=True)
    create = sub.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--key", help="use this key instead of a generated one")
    create.add_argument("--alias", dest="key_alias")
    create.add_argument("--models", nargs="*", default=[], help="allowed model aliases")
    create.add_argument("--max-budget", type=float)
    create.add_argument("--budget-duration", help="e.g. 30d, 1mo")
    create.add_argument("--rpm-limit", type=int)
    create.add_argument("--tpm-limit", type=int)
    create.add_argument("--max-parallel-requests", type=int)
    create.add_argument("--duration", help="lifetime, e.g. 30d")
    create.add_argument("--user-id")
    create.add_argument("--team-id")
    sub.add_parser("list", help="list keys (hashes, aliases, limits, spend)")
    info = sub.add_parser("info", help="one key's settings and spend")
    info.add_argument("key", help="the key or its hash")
    delete = sub.add_parser("delete", help="delete keys")
    delete.add_argument("keys", nargs="+", help="keys or their hashes")


async def run_key_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        async with _store(settings) as store:
            await store.migrate()
            # No publisher: running replicas drop changed keys when their cache TTL ends.
            service = KeyService(store, KeyCache())
            return await _key_command(service, args)
    except (DatabaseError, DatabaseUnavailableError) as exc:
        sys.stderr.write(f"llm-proxy: {exc}\n")
        return 1


async def _key_command(service: KeyService, args: argparse.Namespace) -> int:
    if args.key_command == "create":
        fields = {
            name: getattr(args, name)
            for name in GenerateKeyRequest.__struct_fields__
            if getattr(args, name, None) is not None
        }
        raw, record = await service.generate(msgspec.convert(fields, GenerateKeyRequest))
        _print({"key": raw, "token": record.token_hash, "key_alias": record.key_alias})
    elif args.key_command == "list":
        offset = 0
        while page := await service.list_keys(user_id=None, team_id=None, limit=500, offset=offset):
            for record in page:
                _print(record)
            offset += len(page)
    elif args.key_command == "info":
        _print(await service.info(args.key))
    elif args.key_command == "delete":
        deleted = await service.delete(args.keys, [])
        _print({"deleted_keys": deleted})
        return 0 if len(deleted) == len(args.keys) else 1
    return 0
