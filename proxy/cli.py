"""``llm-proxy migrate``, ``llm-proxy keys ...`` and ``llm-proxy usage prune``: the same
service code as the admin API and the proxy's own background tasks.

``migrate`` is what a Kubernetes Job runs before a rollout; it is idempotent and safe next
to replicas that migrate at start-up (the schema change is serialised by an advisory lock).
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from proxy.audit import cli_actor
from proxy.errors import ProxyError
from proxy.keys import KeyCache, KeyService
from proxy.secrets import SecretError, read_secret
from proxy.settings import Settings
from proxy.store import DatabaseError, DatabaseUnavailableError, Store, open_store
from proxy.usage.retention import UsagePruner
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
    # A key given as --key VALUE is on the command line, which other users of the machine
    # can read (ps, /proc): --key-file or --key - keep it off.
    chosen = create.add_mutually_exclusive_group()
    chosen.add_argument(
        "--key",
        metavar="KEY|-",
        help="use this key instead of a generated one; '-' reads it from stdin "
        "(a literal KEY is visible to other users in ps: prefer --key-file or --key -)",
    )
    chosen.add_argument(
        "--key-file", metavar="PATH", help="use the key in this file (one trailing newline dropped)"
    )
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


def _chosen_key(args: argparse.Namespace) -> str | None:
    """The key ``keys create`` was given: from --key-file, stdin (--key -) or --key itself."""
    if args.key_file is not None:
        return read_secret(args.key_file, "--key-file")
    if args.key == "-":
        text = sys.stdin.read().removesuffix("\n").removesuffix("\r")
        if not text.strip():
            raise SecretError("--key -: no key on stdin")
        return text
    if args.key is not None:
        sys.stderr.write(
            "llm-proxy: warning: --key puts the key on the command line, where other users "
            "can see it (ps); use --key-file PATH or --key - (stdin) instead\n"
        )
    return str(args.key) if args.key is not None else None


async def run_key_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.key_command == "create":
        try:
            args.key = _chosen_key(args)
        except SecretError as exc:
            sys.stderr.write(f"llm-proxy: {exc}\n")
            return 2
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
        request = msgspec.convert(fields, GenerateKeyRequest)
        try:
            raw, record = await service.generate(request, by=cli_actor())
        except ProxyError as exc:  # e.g. a chosen key that is too short or already exists
            sys.stderr.write(f"llm-proxy: {exc.message}\n")
            return 2
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
        deleted = await service.delete(args.keys, [], by=cli_actor())
        _print({"deleted_keys": deleted})
        return 0 if len(deleted) == len(args.keys) else 1
    return 0


def add_usage_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="usage_command", required=True)
    prune = sub.add_parser(
        "prune", help="roll up and delete usage records older than the retention period"
    )
    prune.add_argument(
        "--retention-days", type=int, help="whole UTC days to keep (default: usage.retention_days)"
    )
    prune.add_argument("--batch-size", type=int, help="rows per transaction")
    prune.add_argument(
        "--no-rollup", action="store_true", help="delete without adding to daily totals"
    )


async def run_usage_command(settings: Settings, args: argparse.Namespace) -> int:
    usage = settings.usage
    days = args.retention_days if args.retention_days is not None else usage.retention_days
    if days is None or days < 1:
        sys.stderr.write(
            "llm-proxy: usage prune needs --retention-days N (N >= 1) or usage.retention_days\n"
        )
        return 2
    batch_size = args.batch_size if args.batch_size is not None else usage.prune_batch_size
    if batch_size < 1:
        sys.stderr.write("llm-proxy: --batch-size must be at least 1\n")
        return 2
    rollup = usage.rollup and not args.no_rollup
    try:
        async with _store(settings) as store:
            await store.migrate()
            pruner = UsagePruner(store, retention_days=days, rollup=rollup, batch_size=batch_size)
            result = await pruner.prune_once()
    except (DatabaseError, DatabaseUnavailableError) as exc:
        sys.stderr.write(f"llm-proxy: usage prune failed: {exc}\n")
        return 1
    _print(result)
    return 0
