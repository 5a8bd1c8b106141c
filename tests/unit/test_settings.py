"""Settings: our format, LiteLLM's spellings, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.settings import ConfigError, load_settings
from tests.conftest import WriteConfig

MOCK = {"model_name": "m", "params": {"model": "mock/m"}}


def test_defaults_without_a_file() -> None:
    """With no file the proxy starts with no models on port 8000."""
    settings = load_settings(None, {}, lambda _: None)
    assert settings.model_list == ()
    assert settings.server.port == 8000
    assert settings.master_key is None


def test_litellm_config_loads_with_warnings(write_config: WriteConfig) -> None:
    """A LiteLLM config.yaml loads; each ignored setting gets one warning line."""
    path = write_config(
        {
            "model_list": [
                {
                    "model_name": "gpt-4o",
                    "litellm_params": {
                        "model": "openai/gpt-4o",
                        "api_key": "os.environ/OPENAI_API_KEY",
                        "rpm": 100,
                        "drop_params": True,
                    },
                    "model_info": {"id": "dep-1"},
                }
            ],
            "general_settings": {"master_key": "sk-master", "database_url": "x"},
            "litellm_settings": {"drop_params": True},
            "environment_variables": {"OPENAI_API_KEY": "sk-from-config"},
        }
    )
    warnings: list[str] = []
    settings = load_settings(str(path), {}, warnings.append)
    entry = settings.model_list[0]
    assert entry.params.api_key == "sk-from-config"
    assert entry.params.rpm == 100
    assert entry.deployment_id == "dep-1"
    assert settings.master_key == "sk-master"
    assert entry.params.drop_params is True
    assert settings.database.url == "x"
    assert warnings == [
        "litellm_settings.drop_params is not supported yet and is ignored",
    ]


def test_environment_overrides_file(write_config: WriteConfig) -> None:
    """LLM_PROXY_* variables win over the file; the master key comes from the environment."""
    path = write_config({"model_list": [MOCK], "server": {"port": 9000, "workers": 4}})
    env = {"LLM_PROXY_PORT": "9100", "LLM_PROXY_WORKERS": "1", "LLM_PROXY_MASTER_KEY": "sk-x"}
    settings = load_settings(str(path), env, lambda _: None)
    assert settings.server.port == 9100
    assert settings.server.workers == 1
    assert settings.master_key == "sk-x"


def test_unset_provider_key_disables_the_deployment(write_config: WriteConfig) -> None:
    """A deployment whose os.environ/ key is unset is left out with a warning, not fatal."""
    entry = {"model_name": "gpt", "params": {"model": "openai/gpt", "api_key": "os.environ/NOPE"}}
    path = write_config({"model_list": [MOCK, entry]})
    warnings: list[str] = []
    settings = load_settings(str(path), {}, warnings.append)
    assert settings.model_names == ("m",)
    assert "NOPE is not set; this deployment is disabled" in warnings[0]


def test_provider_keys_default_from_the_environment(write_config: WriteConfig) -> None:
    """Deployments without api_key take the provider's conventional variable when it is set."""

    def entry(name: str, **params: str) -> dict[str, Any]:
        return {"model_name": name, "params": params}

    path = write_config(
        {
            "model_list": [
                entry("claude", model="anthropic/claude-sonnet-4"),
                entry("gpt", model="openai/gpt-4o"),
                entry("local", model="openai/llama", api_base="http://localhost:8001/v1"),
                entry("az", model="azure/dep", api_base="https://x", api_version="2024-10-21"),
                entry("own", model="anthropic/claude-haiku", api_key="sk-own"),
            ],
            "environment_variables": {"AZURE_API_KEY": "az-key"},
        }
    )
    env = {"ANTHROPIC_API_KEY": "sk-ant", "OPENAI_API_KEY": "sk-oai"}
    keys = [e.params.api_key for e in load_settings(str(path), env, lambda _: None).model_list]
    assert keys == ["sk-ant", "sk-oai", None, "az-key", "sk-own"]
    quiet = load_settings(str(path), {}, lambda _: None).model_list
    assert [e.params.api_key for e in quiet] == [None, None, None, "az-key", "sk-own"]


def test_anthropic_deployment_params_have_defaults(write_config: WriteConfig) -> None:
    """An anthropic deployment loads with the translation defaults (4096 tokens, drop params)."""
    path = write_config({"model_list": [{"model_name": "c", "params": {"model": "anthropic/c"}}]})
    params = load_settings(str(path), {}, lambda _: None).model_list[0].params
    assert (params.provider, params.default_max_tokens, params.drop_params) == (
        "anthropic",
        4096,
        True,
    )
    assert params.anthropic_version == "2023-06-01"


def test_unset_master_key_variable_is_fatal(write_config: WriteConfig) -> None:
    """A master key that cannot be resolved stops start-up rather than running open."""
    path = write_config({"master_key": "os.environ/NOPE"})
    with pytest.raises(ConfigError, match="master_key: environment variable NOPE is not set"):
        load_settings(str(path), {}, lambda _: None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"model_list": [MOCK, MOCK, {"model_name": "x", "params": {"model": "gpt-4o"}}]},
            "model_list[2].params.model: expected \"provider/model\", got 'gpt-4o'",
        ),
        (
            {"model_list": [{"model_name": "x", "params": {"model": "bogus/m"}}]},
            "model_list[0].params.model: unknown provider 'bogus'",
        ),
        ({"server": {"port": "abc"}}, "server.port: expected `int`, got `str`"),
        ({"server": {"port": 70000}}, "server.port: expected 1..65535, got 70000"),
        ({"server": {"colour": "red"}}, "server: object contains unknown field `colour`"),
        ({"model_list": [{"model_name": "x"}]}, "model_list[0]: object missing required field"),
        ({"model_list": {"a": 1}}, "model_list: expected a list"),
        ({"nonsense": 1}, "nonsense: unknown setting"),
        (
            {"model_list": [{"model_name": "a", "params": {"model": "azure/dep"}}]},
            "model_list[0].params: azure deployments need api_base and api_version",
        ),
        (
            {
                "model_list": [
                    {"model_name": "a", "params": {"model": "openai/x", "api_base": "ftp://x"}}
                ]
            },
            "model_list[0].params.api_base: expected an http:// or https:// URL",
        ),
    ],
)
def test_bad_config_names_the_field(
    write_config: WriteConfig, data: dict[str, Any], message: str
) -> None:
    """Every config error message starts with the path of the offending field."""
    with pytest.raises(ConfigError) as info:
        load_settings(str(write_config(data)), {}, lambda _: None)
    assert message in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    """A missing file or broken YAML is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(str(tmp_path / "missing.yaml"), {}, lambda _: None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(str(bad), {}, lambda _: None)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(str(top), {}, lambda _: None)


def test_litellm_router_settings_map_onto_ours(write_config: WriteConfig) -> None:
    """num_retries, cooldown_time and allowed_fails from router_settings are honoured."""
    path = write_config(
        {
            "model_list": [MOCK],
            "router_settings": {
                "num_retries": 4,
                "cooldown_time": 12,
                "allowed_fails": 2,
                "routing_strategy": "least-busy",
                "enable_pre_call_checks": True,
            },
        }
    )
    warnings: list[str] = []
    settings = load_settings(str(path), {}, warnings.append)
    assert (settings.router.num_retries, settings.router.cooldown_seconds) == (4, 12)
    assert settings.router.allowed_fails == 2
    assert settings.router.strategy == "least-busy"
    assert warnings == [
        "router_settings.enable_pre_call_checks is not supported yet and is ignored"
    ]


def test_cache_section_and_redis_url_default(write_config: WriteConfig) -> None:
    """``cache:`` is ours; a Redis cache without a URL uses the limiter's Redis."""
    path = write_config({"model_list": [MOCK], "cache": {"type": "redis", "ttl": 60}})
    settings = load_settings(str(path), {"REDIS_URL": "redis://r:6379/1"}, lambda _: None)
    assert settings.cache is not None
    assert settings.cache.type == "redis"
    assert settings.cache.ttl == 60
    assert settings.cache.redis_url == "redis://r:6379/1"
    assert load_settings(None, {}, lambda _: None).cache is None


def test_litellm_cache_params_map_onto_the_cache_section(write_config: WriteConfig) -> None:
    """LiteLLM's ``cache: true`` + ``cache_params`` keep their behaviour, secrets resolved."""
    path = write_config(
        {
            "model_list": [MOCK],
            "litellm_settings": {
                "cache": True,
                "cache_params": {
                    "type": "redis",
                    "host": "cache.internal",
                    "port": 6380,
                    "password": "os.environ/CACHE_PASSWORD",
                    "ttl": 600,
                    "namespace": "prod",
                },
                "set_verbose": False,
            },
        }
    )
    warnings: list[str] = []
    settings = load_settings(str(path), {"CACHE_PASSWORD": "p@ss"}, warnings.append)
    assert settings.cache is not None
    assert settings.cache.redis_url == "redis://:p%40ss@cache.internal:6380/0"
    assert (settings.cache.ttl, settings.cache.namespace) == (600, "prod")
    assert warnings == ["litellm_settings.set_verbose is not supported yet and is ignored"]


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"type": "disk"}, "cache.type"),
        ({"ttl": 0}, "cache.ttl: must be positive"),
        ({"type": "redis"}, "cache.redis_url: required"),
    ],
)
def test_bad_cache_settings_name_the_field(
    write_config: WriteConfig, cache: dict[str, Any], message: str
) -> None:
    path = write_config({"model_list": [MOCK], "cache": cache})
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(str(path), {}, lambda _: None)


def test_litellm_local_cache_turns_the_memory_cache_on(write_config: WriteConfig) -> None:
    path = write_config({"model_list": [MOCK], "litellm_settings": {"cache": True}})
    settings = load_settings(str(path), {}, lambda _: None)
    assert settings.cache is not None and settings.cache.type == "memory"
    off = write_config({"model_list": [MOCK], "litellm_settings": {"cache": False}})
    assert load_settings(str(off), {}, lambda _: None).cache is None


def test_litellm_router_settings_routing_fallbacks_and_timeouts(write_config: WriteConfig) -> None:
    """routing_strategy (v2 spelling), retry_after, timeout and the fallback lists map over."""
    path = write_config(
        {
            "model_list": [
                MOCK,
                {"model_name": "n", "litellm_params": {"model": "mock/n", "timeout": 9}},
                {"model_name": "s", "litellm_params": {"model": "mock/s", "stream_timeout": 3}},
            ],
            "router_settings": {
                "routing_strategy": "usage-based-routing-v2",
                "retry_after": 0.5,
                "timeout": 42,
                "fallbacks": [{"m": ["n", "s"]}, {"n": ["m"]}],
                "context_window_fallbacks": [{"m": ["n"]}],
                "content_policy_fallbacks": [{"s": "m"}],
            },
        }
    )
    settings = load_settings(str(path), {}, lambda _: None)
    r = settings.router
    assert (r.strategy, r.retry_backoff_seconds, r.timeout) == ("usage-based-routing", 0.5, 42)
    assert r.fallbacks == (("m", ("n", "s")), ("n", ("m",)))
    assert r.context_window_fallbacks == (("m", ("n",)),)
    assert r.content_policy_fallbacks == (("s", ("m",)),)
    timeouts = [e.params.timeout for e in settings.model_list]
    assert timeouts == [42, 9, 42]  # the router's timeout for deployments that set none
    assert [e.params.ttft_timeout for e in settings.model_list] == [None, None, 3]


def test_our_router_section_takes_strategy_sticky_and_queue(write_config: WriteConfig) -> None:
    """router: strategy, sticky_aliases, queue limits and fallbacks in our own spelling."""
    path = write_config(
        {
            "model_list": [{**MOCK, "params": {"model": "mock/m", "max_parallel_requests": 4}}],
            "router": {
                "strategy": "latency-based-routing",
                "sticky_aliases": ["m"],
                "queue_max_wait_seconds": 2.5,
                "queue_max_depth": 7,
                "fallbacks": {"m": ["n"]},
            },
        }
    )
    settings = load_settings(str(path), {}, lambda _: None)
    r = settings.router
    assert (r.strategy, r.sticky_aliases) == ("latency-based-routing", ("m",))
    assert (r.queue_max_wait_seconds, r.queue_max_depth) == (2.5, 7)
    assert r.fallbacks == (("m", ("n",)),)
    assert settings.model_list[0].params.max_parallel_requests == 4


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"router": {"strategy": "fastest"}}, "router.strategy: unknown routing strategy"),
        ({"router_settings": {"routing_strategy": "cost-based-routing"}}, "router.strategy"),
        ({"router_settings": {"fallbacks": "m"}}, "router.fallbacks: expected a list"),
        ({"router_settings": {"fallbacks": [{"m": [1]}]}}, "router.fallbacks[0].m"),
        ({"router_settings": {"fallbacks": [[]]}}, r"router.fallbacks[0]: expected a mapping"),
        ({"router": {"queue_max_depth": -1}}, "router.queue_max_depth: must be >= 0"),
        ({"router_settings": {"timeout": 0}}, "router.timeout: must be positive"),
    ],
)
def test_bad_router_settings_name_the_field(
    write_config: WriteConfig, section: dict[str, Any], message: str
) -> None:
    """An unknown strategy or malformed fallbacks stop start-up naming the field."""
    path = write_config({"model_list": [MOCK], **section})
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), {}, lambda _: None)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_parallel_requests": 0}, "model_list[0].params.max_parallel_requests"),
        ({"ttft_timeout": 0}, "model_list[0].params.ttft_timeout: must be positive"),
        ({"stream_timeout": -1}, "model_list[0].params.ttft_timeout: must be positive"),
    ],
)
def test_bad_deployment_queue_and_ttft_settings_name_the_field(
    write_config: WriteConfig, params: dict[str, Any], message: str
) -> None:
    """max_parallel_requests below 1 and non-positive ttft timeouts are config errors."""
    path = write_config(
        {"model_list": [{"model_name": "m", "params": {"model": "mock/m", **params}}]}
    )
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), {}, lambda _: None)
    assert message in str(info.value)
