"""The ``llm-proxy`` command: ``serve`` (the default), ``check-config``, ``migrate``, ``keys``,
``usage``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from proxy import __version__
from proxy.cli import (
    add_key_commands,
    add_usage_commands,
    migrate,
    run_key_command,
    run_usage_command,
)
from proxy.settings import ConfigError, Settings, load_settings

CONFIG_ERROR_EXIT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-proxy", description="OpenAI-compatible LLM gateway")
    parser.add_argument("--version", action="version", version=f"llm-proxy {__version__}")
    sub = parser.add_subparsers(dest="command")
    for name, text in (
        ("serve", "run the proxy (default)"),
        ("check-config", "validate the config"),
        ("migrate", "create or upgrade the database schema, then exit"),
        ("keys", "manage virtual keys in the database"),
        ("usage", "usage records: prune old ones (retention)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="YAML config file (default: $LLM_PROXY_CONFIG)")
        if name == "serve":
            p.add_argument("--host")
            p.add_argument("--port", type=int)
            p.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
        if name == "keys":
            add_key_commands(p)
        if name == "usage":
            add_usage_commands(p)
    return parser


def _load(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    for flag, name in (
        ("host", "LLM_PROXY_HOST"),
        ("port", "LLM_PROXY_PORT"),
        ("workers", "LLM_PROXY_WORKERS"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            env[name] = str(value)
    path = args.config or env.get("LLM_PROXY_CONFIG")
    return load_settings(path, env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]
    args = _parser().parse_args(argv)
    try:
        settings = _load(args)
    except ConfigError as exc:
        print(f"llm-proxy: config error: {exc}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    if args.command == "migrate":
        return asyncio.run(migrate(settings))
    if args.command == "keys":
        return asyncio.run(run_key_command(settings, args))
    if args.command == "usage":
        return asyncio.run(run_usage_command(settings, args))
    if args.command == "check-config":
        print(
            f"config ok: {len(settings.model_list)} deployment(s) for "
            f"{len(settings.model_names)} model(s)"
        )
        return 0
    from proxy.server import serve

    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
