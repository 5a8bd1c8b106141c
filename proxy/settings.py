"""Settings: one YAML file plus environment variables, decoded into frozen msgspec Structs.

The file format is ours, and it also accepts LiteLLM's spellings (``litellm_params``,
``general_settings.master_key``, ``environment_variables``) so that an existing LiteLLM
``config.yaml`` loads unchanged for the features we support. Settings we do not support are
dropped with one warning line each; settings that are wrong stop start-up with a
``ConfigError`` whose message names the field path (``model_list[2].params.model: ...``).

The environment is read here and nowhere else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Literal, TypeVar, get_args

import msgspec
import yaml

from proxy import tls
from proxy.cache_settings import CacheSettings, from_litellm
from proxy.secrets import SecretError, SecretFile, Target, env_secret, file_reference, read_secret

PROVIDERS = ("openai", "azure", "anthropic", "mock")
ENV_PREFIX = "os.environ/"
T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem; the message names the field path and what is wrong."""


class _UnsetVariableError(ConfigError):
    """An ``os.environ/NAME`` reference to a variable that is not set."""


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = 0  # 0: one per CPU core
    max_request_bytes: int = 10 * 1024 * 1024
    request_read_timeout: float = 60.0  # seconds to receive a whole request
    keep_alive_timeout: float = 75.0  # above common load balancers' idle timeout (60 s)
    graceful_shutdown_seconds: float = 30.0
    access_log: bool = False  # one JSON line per request (never prompts or keys)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    metrics: bool = True
    # export spend and remaining budget of the N keys that spent most (0: off; cardinality)
    metrics_top_keys: int = 0
    # how often file-backed secrets are checked for a change (0: only on SIGHUP)
    secrets_check_seconds: float = 5.0


class DatabaseSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Keys and usage live in Postgres (``url``, DATABASE_URL) or, without one, SQLite."""

    url: str | None = None
    sqlite_path: str = "llm-proxy.db"
    # Connections per worker process: the server needs pool_max x workers x replicas.
    pool_min: int = 1
    pool_max: int = 5
    schema: str | None = None
    migrate_on_start: bool = True


class LimitsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Shared limits through Redis (``redis_url``, REDIS_URL); in-process without one."""

    redis_url: str | None = None
    key_prefix: str = "llm-proxy:"
    # Past this a Redis call counts as failed and the failure policy applies; the breaker
    # then skips Redis until a background probe succeeds, so a dead Redis costs it once.
    timeout_ms: float = 500.0
    failure_policy: Literal["fail_open", "fail_closed", "local_share"] = "local_share"
    replicas: int = 1  # processes sharing the limits (pods x workers), for local_share
    lease_ttl_seconds: float = 600.0
    token_rate_limit_type: Literal["input", "output", "total"] = "total"
    # While a subject is far from its limits (each allotment at most 1/10 of what is left),
    # each process takes room for up to this many requests from Redis in one call and admits
    # them itself for up to allotment_seconds; 0 or 1: every request is counted in Redis.
    allotment_size: int = 100
    allotment_seconds: float = 1.0
    default_output_tokens: int = 1024  # TPM/budget estimate when a request sets no max_tokens


RoutingStrategy = Literal[
    "simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing"
]
Fallbacks = tuple[tuple[str, tuple[str, ...]], ...]


class RouterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Retries to another deployment and cooldowns (LiteLLM's router_settings map here)."""

    num_retries: int = 2  # further attempts after the first, on 429, 5xx, timeouts, resets
    retry_backoff_seconds: float = 0.1  # first backoff; doubles, with full jitter
    max_backoff_seconds: float = 5.0  # also the longest upstream retry-after waited for
    cooldown_seconds: float = 30.0
    allowed_fails: int = 3  # failures in a minute before a deployment cools down
    # how to choose among an alias's deployments (proxy/routing/strategies.py)
    strategy: RoutingStrategy = "simple-shuffle"
    # aliases whose requests stick to one deployment per affinity key (prompt_cache_key,
    # user, or system-prompt prefix), so provider-side prompt caches stay warm
    sticky_aliases: tuple[str, ...] = ()
    # a deployment at max_parallel_requests (or its rpm) queues requests fairly across
    # keys; past the wait, or with this many already waiting for it, the client gets 429
    queue_max_wait_seconds: float = 5.0
    queue_max_depth: int = 100
    # LiteLLM's router_settings.timeout: the timeout of deployments that set none
    timeout: float | None = None
    # (alias, (fallback aliases, in order)); from LiteLLM's [{alias: [fallbacks]}] form
    fallbacks: Fallbacks = ()
    context_window_fallbacks: Fallbacks = ()
    content_policy_fallbacks: Fallbacks = ()


class KeysSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cache_ttl_seconds: float = 30.0
    negative_cache_ttl_seconds: float = 5.0


class UsageSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    flush_interval_seconds: float = 1.0
    # A batch is written when this many records wait or the interval has passed, so a
    # worker killed outright loses at most this many, or one interval's. At 9,000 requests
    # a second, 500 cost no more CPU than 5,000 and kept the p99 at 64 connections at ~11
    # ms instead of ~16 (bench/README.md, "Keys: one usage write a second, as configured").
    batch_size: int = 500
    max_buffered: int = 50_000  # records kept in memory while the database is away
    spill_dir: str | None = None  # then they go to files here (default: the temp dir)
    # Retention (proxy/usage/retention.py): records older than this many whole UTC days are
    # rolled up into daily totals (when rollup) and deleted; None keeps them forever.
    retention_days: int | None = None
    rollup: bool = True
    prune_interval_seconds: float = 3600.0
    prune_batch_size: int = 5000  # rows per transaction, so no lock is held for long


class DeploymentParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    api_base: str | None = None
    api_key: str | None = None
    api_version: str | None = None
    timeout: float = 600.0  # whole non-stream request; idle gap between stream chunks
    connect_timeout: float = 5.0
    rpm: int | None = None
    tpm: int | None = None
    weight: float | None = None  # None: by rpm when set, else equal
    max_connections: int = 256
    max_parallel_requests: int | None = None  # beyond this, requests queue (router.queue_*)
    ttft_timeout: float | None = (
        None  # streams: seconds to the first chunk (LiteLLM stream_timeout)
    )
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    http2: bool = False
    client: Literal["h1", "aiohttp", "httpx"] = "h1"  # upstream HTTP client (bench/README.md)
    # translating providers (anthropic): unsupported client parameters are dropped (and
    # reported) when true, a 400 naming the parameter when false
    drop_params: bool = True
    default_max_tokens: int = 4096  # Anthropic requires max_tokens; used when the client omits it
    anthropic_version: str = "2023-06-01"
    # price overrides, LiteLLM's spelling (USD per token); the bundled table otherwise
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    # mock provider only
    mock_response: str | None = None
    mock_latency_ms: float = 0.0
    mock_chunk_delay_ms: float = 0.0
    mock_chunks: int = 8

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def upstream_model(self) -> str:
        return self.model.split("/", 1)[1]


class ModelEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model_name: str
    params: DeploymentParams
    model_info: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def deployment_id(self) -> str:
        explicit = self.model_info.get("id")
        return str(explicit) if explicit else f"{self.model_name}/{self.params.model}"


class RedisTLSSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Files for every ``rediss://`` URL (REDIS_CA_FILE, REDIS_CERT_FILE, REDIS_KEY_FILE).

    Folded into each URL as redis-py's query parameters where it names none (proxy/tls.py).
    """

    ca_file: str | None = None  # default: the system's CAs
    cert_file: str | None = None  # client certificate, for tls-auth-clients
    key_file: str | None = None


class PreviousMasterKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A replaced master key, still accepted until ``expires`` (README: Secrets)."""

    key: str
    expires: datetime


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model_list: tuple[ModelEntry, ...] = ()
    server: ServerSettings = ServerSettings()
    master_key: str | None = None
    previous_master_keys: tuple[PreviousMasterKey, ...] = ()
    # a file-backed master key replaced at runtime stays valid this long
    master_key_grace_seconds: float = 0.0
    # filled by the loader, not the config file: where file-backed secrets go on a re-read
    secret_files: tuple[SecretFile, ...] = ()
    database: DatabaseSettings = DatabaseSettings()
    limits: LimitsSettings = LimitsSettings()
    keys: KeysSettings = KeysSettings()
    usage: UsageSettings = UsageSettings()
    router: RouterSettings = RouterSettings()
    cache: CacheSettings | None = None  # absent: no response cache
    redis_tls: RedisTLSSettings | None = None

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.model_name for m in self.model_list))


# LiteLLM settings we accept without acting on them yet: warn once, do not fail.
_OUR_SECTIONS = (
    "model_list", "server", "master_key", "database", "limits", "keys", "usage", "router",
    "cache", "redis_tls", "previous_master_keys", "master_key_grace_seconds",
)  # fmt: skip
_LITELLM_CACHE_KEYS = ("cache", "cache_params")
# LiteLLM's router_settings that map onto ours.
_ROUTER_ALIASES = {
    "num_retries": "num_retries",
    "cooldown_time": "cooldown_seconds",
    "allowed_fails": "allowed_fails",
    "routing_strategy": "strategy",
    "retry_after": "retry_backoff_seconds",  # LiteLLM: least seconds before a retry
    "timeout": "timeout",
    "fallbacks": "fallbacks",
    "context_window_fallbacks": "context_window_fallbacks",
    "content_policy_fallbacks": "content_policy_fallbacks",
}
_STRATEGY_SPELLINGS = {"usage-based-routing-v2": "usage-based-routing"}
_FALLBACK_FIELDS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")
_DEPLOYMENT_FIELDS = frozenset(DeploymentParams.__struct_fields__)
_ENTRY_FIELDS = frozenset(ModelEntry.__struct_fields__) | {"litellm_params"}


def load_settings(
    path: str | None,
    env: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Read the config file (if any), apply environment overrides, and validate."""
    env = os.environ if env is None else env
    warnings: list[str] = []
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        raw = loaded
    found: list[SecretFile] = []
    token = _found.set(found)
    try:
        data = _normalise(raw, env, warnings)
        _apply_env(data, env)
    finally:
        _found.reset(token)
    data["secret_files"] = found
    settings = _with_tls(_convert(data))
    _check(settings)
    for line in warnings:
        (warn or _print_warning)(line)
    return settings


def _print_warning(line: str) -> None:
    print(f"llm-proxy: warning: {line}", flush=True)


def _normalise(raw: dict[str, Any], env: Mapping[str, str], warnings: list[str]) -> dict[str, Any]:
    """Map LiteLLM spellings onto ours, resolve os.environ/ references, drop ignored keys."""
    data: dict[str, Any] = {}
    extra_env = raw.get("environment_variables") or {}
    if not isinstance(extra_env, dict):
        raise ConfigError("environment_variables: expected a mapping")
    lookup: dict[str, str] = {**{str(k): str(v) for k, v in extra_env.items()}, **env}
    for key, value in raw.items():
        if key in _OUR_SECTIONS:
            data[key] = value
        elif key == "general_settings":
            _take_general_settings(value, data, warnings)
        elif key == "environment_variables":
            continue
        elif key == "router_settings":
            _take_router_settings(value, data, warnings)
        elif key == "litellm_settings":
            _take_litellm_settings(value, data, lookup, warnings)
        else:
            raise ConfigError(f"{key}: unknown setting")
    models = data.get("model_list")
    if models is not None:
        if not isinstance(models, list):
            raise ConfigError("model_list: expected a list of model entries")
        entries = []
        kept: list[int] = []
        for i, entry in enumerate(models):
            try:
                entries.append(_normalise_entry(i, entry, lookup, warnings))
                kept.append(i)
            except _UnsetVariableError as exc:
                # The example config lists real providers next to the mock: a deployment
                # whose key is not in the environment is left out, loudly, not fatal.
                warnings.append(f"{exc}; this deployment is disabled")
        data["model_list"] = entries
        _renumber_api_keys(kept)
    _normalise_router(data)
    for section, key in (("database", "url"), ("limits", "redis_url"), ("cache", "redis_url")):
        part = data.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str):
            part[key] = _resolve(part[key], f"{section}.{key}", lookup)
    try:
        if isinstance(data.get("master_key"), str):
            data["master_key"] = _resolve(data["master_key"], "master_key", lookup)
        for i, item in enumerate(data.get("previous_master_keys") or ()):
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                where = f"previous_master_keys[{i}].key"
                data["previous_master_keys"][i] = {
                    **item,
                    "key": _resolve(item["key"], where, lookup),
                }
    except _UnsetVariableError as exc:
        raise ConfigError(str(exc)) from None  # never run open by accident
    return data


def _take_litellm_settings(
    value: Any, data: dict[str, Any], lookup: Mapping[str, str], warnings: list[str]
) -> None:
    """``litellm_settings``: its ``cache`` / ``cache_params`` become our ``cache`` section."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError("litellm_settings: expected a mapping")
    for sub in value:
        if sub not in _LITELLM_CACHE_KEYS:
            warnings.append(f"litellm_settings.{sub} is not supported yet and is ignored")
    if "cache" in data:
        return  # our own section wins
    params = value.get("cache_params")
    if isinstance(params, dict):
        params = {
            k: _resolve(v, f"litellm_settings.cache_params.{k}", lookup)
            if isinstance(v, str)
            else v
            for k, v in params.items()
        }
    try:
        cache = from_litellm({**value, "cache_params": params}, env=lookup, warn=warnings.append)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cache is not None:
        data["cache"] = msgspec.to_builtins(cache)


def _take_router_settings(value: Any, data: dict[str, Any], warnings: list[str]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError("router_settings: expected a mapping")
    for sub, item in value.items():
        if sub in _ROUTER_ALIASES:
            spelled = _STRATEGY_SPELLINGS.get(item, item) if isinstance(item, str) else item
            router = data.setdefault("router", {})
            if isinstance(router, dict):
                router.setdefault(_ROUTER_ALIASES[sub], spelled)
        else:
            warnings.append(f"router_settings.{sub} is not supported yet and is ignored")


def _normalise_router(data: dict[str, Any]) -> None:
    """Fallbacks from LiteLLM's list of one-key mappings; the router timeout onto deployments."""
    router = data.get("router")
    if not isinstance(router, dict):
        return  # absent, or msgspec reports the type error
    strategy = router.get("strategy")
    if isinstance(strategy, str) and strategy not in get_args(RoutingStrategy):
        raise ConfigError(
            f"router.strategy: unknown routing strategy {strategy!r} "
            f"(supported: {', '.join(get_args(RoutingStrategy))})"
        )
    for name in _FALLBACK_FIELDS:
        if name in router:
            router[name] = _fallback_pairs(router[name], f"router.{name}")
    timeout = router.get("timeout")
    for entry in data.get("model_list") or ():
        params = entry.get("params") if isinstance(entry, dict) else None
        if timeout is not None and isinstance(params, dict):
            params.setdefault("timeout", timeout)


def _fallback_pairs(value: Any, where: str) -> list[list[Any]]:
    """``[{"gpt-4o": ["gpt-4o-mini"]}]`` or ``{"gpt-4o": [...]}`` as [[alias, [fallbacks]]]."""
    if value is None:
        return []
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise ConfigError(f"{where}: expected a list of {{alias: [fallback aliases]}} mappings")
    pairs: list[list[Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, list) and len(item) == 2:  # our own form, already pairs
            pairs.append(item)
            continue
        if not isinstance(item, dict) or not item:
            raise ConfigError(f"{where}[{i}]: expected a mapping of alias to fallback aliases")
        for alias, given in item.items():
            targets = [given] if isinstance(given, str) else given
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise ConfigError(f"{where}[{i}].{alias}: expected a list of model aliases")
            pairs.append([str(alias), targets])
    return pairs


def _take_general_settings(value: Any, data: dict[str, Any], warnings: list[str]) -> None:
    if not isinstance(value, dict):
        raise ConfigError("general_settings: expected a mapping")
    for sub, item in value.items():
        if sub == "master_key":
            data.setdefault(sub, item)
        elif sub == "database_url":
            data.setdefault("database", {}).setdefault("url", item)
        elif sub == "database_connection_pool_limit":
            data.setdefault("database", {}).setdefault("pool_max", item)
        else:
            warnings.append(f"general_settings.{sub} is not supported yet and is ignored")


def _normalise_entry(index: int, entry: Any, lookup: Mapping[str, str], warnings: list[str]) -> Any:
    where = f"model_list[{index}]"
    if not isinstance(entry, dict):
        return entry  # msgspec names the type error with its path
    entry = dict(entry)
    for key in list(entry):
        if key not in _ENTRY_FIELDS:
            warnings.append(f"{where}.{key} is not supported yet and is ignored")
            del entry[key]
    if "litellm_params" in entry:
        if "params" in entry:
            raise ConfigError(f"{where}: give either params or litellm_params, not both")
        entry["params"] = entry.pop("litellm_params")
    params = entry.get("params")
    if isinstance(params, dict) and "stream_timeout" in params:  # LiteLLM's spelling
        params = dict(params)
        params.setdefault("ttft_timeout", params.pop("stream_timeout"))
        entry["params"] = params
    params = entry.get("params")
    if isinstance(params, dict):
        params = dict(params)
        for key in list(params):
            if key not in _DEPLOYMENT_FIELDS:
                warnings.append(f"{where}.params.{key} is not supported yet and is ignored")
                del params[key]
            elif isinstance(params[key], str):
                params[key] = _resolve(params[key], f"{where}.params.{key}", lookup)
        if not params.get("api_key"):
            variable = _default_key_variable(params)
            key = _env_value(variable, lookup, f"{where}.params.api_key") if variable else None
            if key:
                params["api_key"] = key
        entry["params"] = params
    return entry


def _default_key_variable(params: dict[str, Any]) -> str | None:
    """The conventional environment variable holding a provider's key, as the SDKs read it.

    OpenAI's only when no api_base is set: an OpenAI-compatible server elsewhere must not
    be sent the OpenAI key by accident.
    """
    model = params.get("model")
    provider = model.partition("/")[0] if isinstance(model, str) else ""
    if provider == "anthropic":
        return "ANTHROPIC_API_KEY"
    if provider == "azure":
        return "AZURE_API_KEY"
    if provider == "openai" and not params.get("api_base"):
        return "OPENAI_API_KEY"
    return None


def _resolve(value: str, where: str, lookup: Mapping[str, str]) -> str:
    """A setting's value: itself, a ``file:/path``'s content, or ``os.environ/NAME``'s."""
    path = file_reference(value)
    if path is not None:
        return _read_secret(path, where, where)
    if not value.startswith(ENV_PREFIX):
        return value
    name = value[len(ENV_PREFIX) :]
    resolved = _env_value(name, lookup, where)
    if resolved is None:
        raise _UnsetVariableError(f"{where}: environment variable {name} is not set")
    return resolved


# The file-backed secrets found by the load under way; the settings they feed are named by
# these patterns, any other setting read from a file is read once, at start-up.
_found: ContextVar[list[SecretFile] | None] = ContextVar("secret_files", default=None)
_ROTATED: tuple[tuple[re.Pattern[str], Target], ...] = (
    (re.compile(r"master_key"), "master_key"),
    (re.compile(r"previous_master_keys\[(\d+)\]\.key"), "previous_master_key"),
    (re.compile(r"model_list\[(\d+)\]\.params\.api_key"), "api_key"),
    (re.compile(r"database\.url"), "database_url"),
    (re.compile(r"limits\.redis_url"), "redis_url"),
    (re.compile(r"cache\.redis_url"), "cache_redis_url"),
)


def _env_value(name: str, lookup: Mapping[str, str], where: str) -> str | None:
    """Variable ``name`` or the file ``NAME_FILE`` names; a found value replaces, for
    ``where``, any earlier file-backed source (environment overrides beat the file)."""
    try:
        found = env_secret(name, lookup)
    except SecretError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if found is None:
        return None
    value, path = found
    if value:
        _untrack(where)
        if path is not None:
            _track(f"{name}_FILE", path, value, where)
    return value


def _read_secret(path: str, name: str, where: str) -> str:
    try:
        value = read_secret(path, name)
    except SecretError as exc:
        raise ConfigError(str(exc)) from None
    _untrack(where)
    _track(name, path, value, where)
    return value


def _target(where: str) -> tuple[Target, int] | None:
    for pattern, target in _ROTATED:
        if match := pattern.fullmatch(where):
            return target, int(match.group(1)) if match.groups() else 0
    return None


def _track(name: str, path: str, value: str, where: str) -> None:
    found, target = _found.get(), _target(where)
    if found is not None and target is not None:
        found.append(SecretFile(name, path, target[0], target[1]).with_value(value))


def _untrack(where: str) -> None:
    found, target = _found.get(), _target(where)
    if found is not None and target is not None:
        found[:] = [f for f in found if (f.target, f.index) != target]


def _renumber_api_keys(kept: list[int]) -> None:
    """Entry indices after disabled deployments were left out of ``model_list``."""
    found = _found.get()
    if found is None:
        return
    position = {old: new for new, old in enumerate(kept)}
    found[:] = [
        f if f.target != "api_key" else msgspec.structs.replace(f, index=position[f.index])
        for f in found
        if f.target != "api_key" or f.index in position
    ]


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    server = data.setdefault("server", {})
    if not isinstance(server, dict):
        return  # msgspec reports the type error
    for name, key in (
        ("LLM_PROXY_HOST", "host"),
        ("LLM_PROXY_PORT", "port"),
        ("LLM_PROXY_WORKERS", "workers"),
        ("LLM_PROXY_LOG_LEVEL", "log_level"),
        ("LLM_PROXY_LOG_FORMAT", "log_format"),
        ("LLM_PROXY_ACCESS_LOG", "access_log"),
    ):
        if env.get(name):
            server[key] = env[name]
    master = _env_value("LLM_PROXY_MASTER_KEY", env, "master_key") or _env_value(
        "LITELLM_MASTER_KEY", env, "master_key"
    )
    if master:
        data["master_key"] = master
    _previous_key_from_env(data, env)
    for name, section, key in (
        ("DATABASE_URL", "database", "url"),
        ("LLM_PROXY_SQLITE_PATH", "database", "sqlite_path"),
        ("REDIS_URL", "limits", "redis_url"),
        ("LLM_PROXY_REPLICAS", "limits", "replicas"),
        ("LLM_PROXY_SPILL_DIR", "usage", "spill_dir"),
        ("REDIS_CA_FILE", "redis_tls", "ca_file"),
        ("REDIS_CERT_FILE", "redis_tls", "cert_file"),
        ("REDIS_KEY_FILE", "redis_tls", "key_file"),
    ):
        where = f"{section}.{key}"
        value = _env_value(name, env, where) if name in _SECRET_VARIABLES else env.get(name)
        if value:
            target = data.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = value
    cache = data.get("cache")
    if isinstance(cache, dict) and cache.get("type") == "redis" and not cache.get("redis_url"):
        limits = data.get("limits")
        if isinstance(limits, dict) and limits.get("redis_url"):
            cache["redis_url"] = limits["redis_url"]  # one Redis for all, unless told otherwise
            found = _found.get()
            for f in list(found or ()):
                if f.target == "redis_url" and found is not None:
                    found.append(msgspec.structs.replace(f, target="cache_redis_url"))


_SECRET_VARIABLES = frozenset({"DATABASE_URL", "REDIS_URL"})


def _previous_key_from_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    """LLM_PROXY_MASTER_KEY_PREVIOUS(_FILE) with its _EXPIRES replaces previous_master_keys."""
    previous = _env_value("LLM_PROXY_MASTER_KEY_PREVIOUS", env, "previous_master_keys[0].key")
    if not previous:
        return
    for i in range(1, len(data.get("previous_master_keys") or ())):
        _untrack(f"previous_master_keys[{i}].key")  # the environment's list replaces the file's
    expires = env.get("LLM_PROXY_MASTER_KEY_PREVIOUS_EXPIRES")
    if not expires:
        raise ConfigError(
            "LLM_PROXY_MASTER_KEY_PREVIOUS: needs LLM_PROXY_MASTER_KEY_PREVIOUS_EXPIRES "
            "(an ISO 8601 time, e.g. 2026-12-01T00:00:00Z)"
        )
    data["previous_master_keys"] = [{"key": previous, "expires": expires}]


def _with_tls(settings: Settings) -> Settings:
    """Fold ``redis_tls`` into every Redis URL, then load each URL's TLS files once now."""
    limits, cache = settings.limits, settings.cache
    if settings.redis_tls is not None:
        files = msgspec.structs.asdict(settings.redis_tls)
        url = _checked("limits.redis_url", tls.with_redis_tls, limits.redis_url, **files)
        limits = msgspec.structs.replace(limits, redis_url=url)
        if cache is not None:
            url = _checked("cache.redis_url", tls.with_redis_tls, cache.redis_url, **files)
            cache = msgspec.structs.replace(cache, redis_url=url)
        settings = msgspec.structs.replace(settings, limits=limits, cache=cache)
    _checked("limits.redis_url", tls.check_redis_url, limits.redis_url)
    _checked("cache.redis_url", tls.check_redis_url, cache.redis_url if cache else None)
    db = settings.database.url
    if db and db.startswith(("postgresql:", "postgres:")):
        _checked("database.url", tls.check_postgres_dsn, db)
    return settings


def _checked(where: str, check: Callable[..., T], url: str | None, **kwargs: Any) -> T | None:
    """``check(url, **kwargs)`` for a set URL; its ValueError as a ConfigError at ``where``."""
    if not url:
        return None
    try:
        return check(url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _convert(data: dict[str, Any]) -> Settings:
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_format_validation_error(str(exc))) from exc


def _format_validation_error(message: str) -> str:
    """msgspec says ``Expected `int`, got `str` - at `$.server.port```; we lead with the path."""
    text, sep, path = message.rpartition(" - at `")
    if not sep:
        return message
    field = path.rstrip("`").removeprefix("$").removeprefix(".") or "(top level)"
    return f"{field}: {text[0].lower()}{text[1:]}"


def _check(settings: Settings) -> None:
    """Rules msgspec cannot express."""
    s = settings.server
    if not 0 < s.port < 65536:
        raise ConfigError(f"server.port: expected 1..65535, got {s.port}")
    if s.workers < 0:
        raise ConfigError(f"server.workers: expected 0 (one per core) or more, got {s.workers}")
    if s.metrics_top_keys < 0:
        raise ConfigError("server.metrics_top_keys: expected 0 (off) or more")
    if s.max_request_bytes < 1024:
        raise ConfigError("server.max_request_bytes: expected at least 1024")
    _check_master_keys(settings)
    if settings.database.pool_max < 1 or settings.database.pool_min > settings.database.pool_max:
        raise ConfigError("database.pool_max: expected at least 1 and at least pool_min")
    if settings.cache is not None:
        try:
            settings.cache.check()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    r = settings.router
    if r.num_retries < 0 or r.allowed_fails < 0 or r.cooldown_seconds < 0:
        raise ConfigError("router: num_retries, allowed_fails and cooldown_seconds must be >= 0")
    for name in ("queue_max_wait_seconds", "queue_max_depth"):
        if getattr(r, name) < 0:
            raise ConfigError(f"router.{name}: must be >= 0")
    if r.timeout is not None and r.timeout <= 0:
        raise ConfigError("router.timeout: must be positive")
    if settings.limits.replicas < 1:
        raise ConfigError("limits.replicas: expected at least 1")
    if settings.limits.allotment_size < 0:
        raise ConfigError("limits.allotment_size: expected 0 or more")
    if not 0 < settings.limits.allotment_seconds <= 10:
        raise ConfigError("limits.allotment_seconds: expected above 0 and at most 10")
    u = settings.usage
    if u.retention_days is not None and u.retention_days < 1:
        raise ConfigError("usage.retention_days: expected at least 1 (or null to keep forever)")
    if u.prune_interval_seconds <= 0 or u.prune_batch_size < 1:
        raise ConfigError("usage: prune_interval_seconds and prune_batch_size must be positive")
    for i, entry in enumerate(settings.model_list):
        where = f"model_list[{i}]"
        p = entry.params
        if not entry.model_name:
            raise ConfigError(f"{where}.model_name: must not be empty")
        provider, sep, upstream = p.model.partition("/")
        if not sep or not provider or not upstream:
            raise ConfigError(f'{where}.params.model: expected "provider/model", got {p.model!r}')
        if provider not in PROVIDERS:
            raise ConfigError(
                f"{where}.params.model: unknown provider {provider!r} "
                f"(supported: {', '.join(PROVIDERS)})"
            )
        if provider == "azure" and (not p.api_base or not p.api_version):
            raise ConfigError(f"{where}.params: azure deployments need api_base and api_version")
        if p.api_base and not p.api_base.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.params.api_base: expected an http:// or https:// URL")
        if p.timeout <= 0 or p.connect_timeout <= 0:
            raise ConfigError(f"{where}.params.timeout: must be positive")
        if p.weight is not None and p.weight < 0:
            raise ConfigError(f"{where}.params.weight: must not be negative")
        if p.max_connections < 1:
            raise ConfigError(f"{where}.params.max_connections: must be at least 1")
        if p.max_parallel_requests is not None and p.max_parallel_requests < 1:
            raise ConfigError(f"{where}.params.max_parallel_requests: must be at least 1")
        if p.ttft_timeout is not None and p.ttft_timeout <= 0:
            raise ConfigError(f"{where}.params.ttft_timeout: must be positive")


def _check_master_keys(settings: Settings) -> None:
    if settings.previous_master_keys and not settings.master_key:
        raise ConfigError("previous_master_keys: needs a master_key (the current one)")
    if settings.master_key_grace_seconds < 0:
        raise ConfigError("master_key_grace_seconds: must not be negative")
    if settings.server.secrets_check_seconds < 0:
        raise ConfigError("server.secrets_check_seconds: must not be negative (0: SIGHUP only)")
    for i, previous in enumerate(settings.previous_master_keys):
        if not previous.key:
            raise ConfigError(f"previous_master_keys[{i}].key: must not be empty")
