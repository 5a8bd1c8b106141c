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
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec
import yaml

from proxy.cache_settings import CacheSettings, from_litellm

PROVIDERS = ("openai", "azure", "anthropic", "mock")
ENV_PREFIX = "os.environ/"


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
    default_output_tokens: int = 1024  # TPM/budget estimate when a request sets no max_tokens


class RouterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Retries to another deployment and cooldowns (LiteLLM's router_settings map here)."""

    num_retries: int = 2  # further attempts after the first, on 429, 5xx, timeouts, resets
    retry_backoff_seconds: float = 0.1  # first backoff; doubles, with full jitter
    max_backoff_seconds: float = 5.0  # also the longest upstream retry-after waited for
    cooldown_seconds: float = 30.0
    allowed_fails: int = 3  # failures in a minute before a deployment cools down


class KeysSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cache_ttl_seconds: float = 30.0
    negative_cache_ttl_seconds: float = 5.0


class UsageSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    flush_interval_seconds: float = 1.0
    batch_size: int = 500
    max_buffered: int = 50_000  # records kept in memory while the database is away
    spill_dir: str | None = None  # then they go to files here (default: the temp dir)


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


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model_list: tuple[ModelEntry, ...] = ()
    server: ServerSettings = ServerSettings()
    master_key: str | None = None
    database: DatabaseSettings = DatabaseSettings()
    limits: LimitsSettings = LimitsSettings()
    keys: KeysSettings = KeysSettings()
    usage: UsageSettings = UsageSettings()
    router: RouterSettings = RouterSettings()
    cache: CacheSettings | None = None  # absent: no response cache

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.model_name for m in self.model_list))


# LiteLLM settings we accept without acting on them yet: warn once, do not fail.
_OUR_SECTIONS = (
    "model_list", "server", "master_key", "database", "limits", "keys", "usage", "router",
    "cache",
)  # fmt: skip
_LITELLM_CACHE_KEYS = ("cache", "cache_params")
# LiteLLM's router_settings that map onto ours.
_ROUTER_ALIASES = {
    "num_retries": "num_retries",
    "cooldown_time": "cooldown_seconds",
    "allowed_fails": "allowed_fails",
}
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
    data = _normalise(raw, env, warnings)
    _apply_env(data, env)
    settings = _convert(data)
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
            for sub, item in (value or {}).items():
                if sub in _ROUTER_ALIASES:
                    data.setdefault("router", {}).setdefault(_ROUTER_ALIASES[sub], item)
                else:
                    warnings.append(f"router_settings.{sub} is not supported yet and is ignored")
        elif key == "litellm_settings":
            _take_litellm_settings(value, data, lookup, warnings)
        else:
            raise ConfigError(f"{key}: unknown setting")
    models = data.get("model_list")
    if models is not None:
        if not isinstance(models, list):
            raise ConfigError("model_list: expected a list of model entries")
        entries = []
        for i, entry in enumerate(models):
            try:
                entries.append(_normalise_entry(i, entry, lookup, warnings))
            except _UnsetVariableError as exc:
                # The example config lists real providers next to the mock: a deployment
                # whose key is not in the environment is left out, loudly, not fatal.
                warnings.append(f"{exc}; this deployment is disabled")
        data["model_list"] = entries
    for section, key in (("database", "url"), ("limits", "redis_url"), ("cache", "redis_url")):
        part = data.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str):
            part[key] = _resolve(part[key], f"{section}.{key}", lookup)
    if isinstance(data.get("master_key"), str):
        try:
            data["master_key"] = _resolve(data["master_key"], "master_key", lookup)
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
            if variable and lookup.get(variable):
                params["api_key"] = lookup[variable]
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
    if not value.startswith(ENV_PREFIX):
        return value
    name = value[len(ENV_PREFIX) :]
    if name not in lookup:
        raise _UnsetVariableError(f"{where}: environment variable {name} is not set")
    return lookup[name]


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
    master = env.get("LLM_PROXY_MASTER_KEY") or env.get("LITELLM_MASTER_KEY")
    if master:
        data["master_key"] = master
    for name, section, key in (
        ("DATABASE_URL", "database", "url"),
        ("LLM_PROXY_SQLITE_PATH", "database", "sqlite_path"),
        ("REDIS_URL", "limits", "redis_url"),
        ("LLM_PROXY_REPLICAS", "limits", "replicas"),
        ("LLM_PROXY_SPILL_DIR", "usage", "spill_dir"),
    ):
        if env.get(name):
            target = data.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = env[name]
    cache = data.get("cache")
    if isinstance(cache, dict) and cache.get("type") == "redis" and not cache.get("redis_url"):
        limits = data.get("limits")
        if isinstance(limits, dict) and limits.get("redis_url"):
            cache["redis_url"] = limits["redis_url"]  # one Redis for all, unless told otherwise


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
    if s.max_request_bytes < 1024:
        raise ConfigError("server.max_request_bytes: expected at least 1024")
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
    if settings.limits.replicas < 1:
        raise ConfigError("limits.replicas: expected at least 1")
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
