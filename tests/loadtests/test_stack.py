"""The harness's small pure helpers: metric scraping, pinning, fresh backends."""

from __future__ import annotations

from loadtests import stack

EXPOSITION = """\
# HELP llm_proxy_requests_in_flight Requests being served right now (streams included).
# TYPE llm_proxy_requests_in_flight gauge
llm_proxy_requests_in_flight 7.0
llm_proxy_queue_depth{deployment="a"} 2.0
llm_proxy_queue_depth{deployment="b"} 3.0
llm_proxy_queue_depth_other 100.0
llm_proxy_streams_open nan-garbage
"""


def test_parse_samples_sums_label_sets_and_ignores_other_series() -> None:
    """Each named series is summed over its labels; similar names and bad values do not count."""
    names = ["llm_proxy_requests_in_flight", "llm_proxy_queue_depth", "llm_proxy_streams_open"]
    assert stack.parse_samples(EXPOSITION, names) == {
        "llm_proxy_requests_in_flight": 7.0,
        "llm_proxy_queue_depth": 5.0,
        "llm_proxy_streams_open": 0.0,
    }


def test_pinned_prefixes_taskset_only_when_cores_are_given() -> None:
    """A core list runs the command under taskset; none leaves it as is."""
    assert stack.pinned(["x", "-y"], "1") == ["taskset", "-c", "1", "x", "-y"]
    assert stack.pinned(["x"], None) == ["x"]


def test_fresh_backends_are_unique_per_run_and_optional() -> None:
    """Each run gets its own schema and key prefix; either can be left out."""
    a, b = stack.Backends.fresh(True, True), stack.Backends.fresh(True, True)
    assert a.postgres_schema != b.postgres_schema and a.redis_prefix != b.redis_prefix
    assert a.postgres_schema is not None and a.postgres_schema.startswith("loadtest_")
    assert stack.Backends.fresh(False, False) == stack.Backends()


def test_proxy_config_uses_the_backends_it_is_given() -> None:
    """Postgres schema, Redis prefix for limits and cache, and the provider for both models."""
    backends = stack.Backends("loadtest_x", "lt:x:")
    config = stack.proxy_config(9999, backends=backends, master_key="sk-m", max_connections=7)
    assert config["database"]["schema"] == "loadtest_x"
    assert config["limits"]["key_prefix"] == "lt:x:"
    assert config["cache"]["key_prefix"] == "lt:x:cache:"
    assert {m["model_name"] for m in config["model_list"]} == {
        stack.CHAT_MODEL,
        stack.EMBEDDING_MODEL,
    }
    assert all(m["params"]["max_connections"] == 7 for m in config["model_list"])
    embedded = stack.proxy_config(9999, backends=stack.Backends(), master_key=None, cache=False)
    assert "database" not in embedded and "cache" not in embedded and "master_key" not in embedded
