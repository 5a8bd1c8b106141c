"""proxy.metrics: what each Recorder method records, the bounded labels, the loop-lag
monitor, and the sums over worker processes in multiprocess mode."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from proxy import errors, metrics
from proxy.metrics import Recorder, error_type_of, status_class


def value(name: str, **labels: str) -> float:
    """The current value of a sample of the default registry, 0 when it does not exist."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def rec() -> Recorder:
    return Recorder(["gpt-unit"])


def test_finished_counts_the_request_and_observes_its_duration(rec: Recorder) -> None:
    """finished() adds one to requests_total and one observation to the duration."""
    before = value("llm_proxy_requests_total", route="chat", model="gpt-unit", status="200")
    count = value("llm_proxy_request_duration_seconds_count", route="chat", model="gpt-unit")
    rec.started()
    rec.finished("chat", "gpt-unit", 200, 0.3)
    rec.finished("chat", "gpt-unit", 200, 0.3)
    assert (
        value("llm_proxy_requests_total", route="chat", model="gpt-unit", status="200")
        == before + 2
    )
    assert (
        value("llm_proxy_request_duration_seconds_count", route="chat", model="gpt-unit")
        == count + 2
    )


def test_in_flight_goes_up_on_start_and_down_on_finish(rec: Recorder) -> None:
    """The in-flight gauge counts requests between started() and finished()."""
    before = value("llm_proxy_requests_in_flight")
    rec.started()
    assert value("llm_proxy_requests_in_flight") == before + 1
    rec.finished("chat", "gpt-unit", 200, 0.1)
    assert value("llm_proxy_requests_in_flight") == before


def test_model_label_is_the_alias_or_other(rec: Recorder) -> None:
    """Names the proxy does not serve collapse into `other`, keeping the label bounded."""
    assert rec.model_label("gpt-unit") == "gpt-unit"
    assert rec.model_label("made-up-by-a-client") == "other"
    assert rec.model_label(None) == "other"


def test_tokens_count_prompt_and_completion_and_skip_zero(rec: Recorder) -> None:
    """tokens() adds to kind=prompt and kind=completion; a zero creates no series."""
    rec.tokens("tok-unit", 12, 0)
    rec.tokens("tok-unit", 3, 5)
    assert value("llm_proxy_tokens_total", model="tok-unit", kind="prompt") == 15
    assert value("llm_proxy_tokens_total", model="tok-unit", kind="completion") == 5
    rec.tokens("tok-unit-2", 4, 0)
    assert (
        REGISTRY.get_sample_value(
            "llm_proxy_tokens_total", {"model": "tok-unit-2", "kind": "completion"}
        )
        is None
    )


def test_cost_adds_dollars_by_model(rec: Recorder) -> None:
    """cost() adds US dollars to the model's counter; zero is not recorded."""
    rec.cost("cost-unit", 0.25)
    rec.cost("cost-unit", 0.5)
    rec.cost("cost-unit", 0.0)
    assert value("llm_proxy_cost_usd_total", model="cost-unit") == pytest.approx(0.75)


def test_upstream_counts_by_status_class_and_observes_duration(rec: Recorder) -> None:
    """upstream() counts one call under its status class and observes its seconds."""
    rec.upstream("openai", "dep-unit", 200, 0.2)
    rec.upstream("openai", "dep-unit", 201, 0.2)
    rec.upstream("openai", "dep-unit", 503, 1.0)
    rec.upstream("openai", "dep-unit", 0, 5.0)
    labels = {"provider": "openai", "deployment": "dep-unit"}
    assert value("llm_proxy_upstream_requests_total", **labels, status="2xx") == 2
    assert value("llm_proxy_upstream_requests_total", **labels, status="5xx") == 1
    assert value("llm_proxy_upstream_requests_total", **labels, status="none") == 1
    assert value("llm_proxy_upstream_duration_seconds_count", **labels) == 4
    assert value("llm_proxy_upstream_duration_seconds_sum", **labels) == pytest.approx(6.4)


def test_overhead_resolves_tens_of_microseconds(rec: Recorder) -> None:
    """The overhead histogram tells 40 µs from 200 µs; negative time counts as zero."""
    rec.overhead("overhead-unit", 0.00004)
    rec.overhead("overhead-unit", 0.0002)
    rec.overhead("overhead-unit", -0.001)
    bucket = "llm_proxy_overhead_seconds_bucket"
    assert value(bucket, route="overhead-unit", le="5e-05") == 2
    assert value(bucket, route="overhead-unit", le="0.00025") == 3
    assert value("llm_proxy_overhead_seconds_sum", route="overhead-unit") == pytest.approx(0.00024)


def test_errors_count_by_route_provider_and_type(rec: Recorder) -> None:
    """error() counts one failure under its route, provider and type."""
    rec.error("chat", "unit-provider", "upstream_timeout")
    rec.error("chat", "unit-provider", "upstream_timeout")
    assert (
        value(
            "llm_proxy_errors_total",
            route="chat",
            provider="unit-provider",
            error_type="upstream_timeout",
        )
        == 2
    )


def test_streams_gauge_and_time_to_first_token(rec: Recorder) -> None:
    """stream_opened/closed move the open-streams gauge; first_token observes TTFT."""
    before = value("llm_proxy_streams_open")
    rec.stream_opened()
    assert value("llm_proxy_streams_open") == before + 1
    rec.first_token("ttft-unit", 0.4)
    rec.stream_closed()
    assert value("llm_proxy_streams_open") == before
    assert value("llm_proxy_time_to_first_token_seconds_count", model="ttft-unit") == 1
    assert value("llm_proxy_time_to_first_token_seconds_sum", model="ttft-unit") == 0.4


def test_output_rate_is_tokens_over_seconds_and_skips_empty_streams(rec: Recorder) -> None:
    """output_rate() observes tokens per second; no tokens or no time records nothing."""
    rec.output_rate("rate-unit", 100, 2.0)
    rec.output_rate("rate-unit", 0, 2.0)
    rec.output_rate("rate-unit", 10, 0.0)
    assert value("llm_proxy_output_tokens_per_second_count", model="rate-unit") == 1
    assert value("llm_proxy_output_tokens_per_second_sum", model="rate-unit") == 50


def test_queue_depth_follows_deltas(rec: Recorder) -> None:
    """queue(+1) and queue(-1) move the queue-depth gauge."""
    before = value("llm_proxy_queue_depth")
    rec.queue(1)
    rec.queue(1)
    assert value("llm_proxy_queue_depth") == before + 2
    rec.queue(-1)
    rec.queue(-1)
    assert value("llm_proxy_queue_depth") == before


def test_a_disabled_recorder_records_nothing() -> None:
    """With enabled=False every method is a no-op."""
    off = Recorder(["off-unit"], enabled=False)
    before = REGISTRY.get_sample_value("llm_proxy_requests_in_flight")
    off.started()
    off.finished("chat", "off-unit", 200, 1.0)
    off.tokens("off-unit", 1, 1)
    off.cost("off-unit", 1.0)
    off.error("chat", "off-provider", "internal")
    off.upstream("off-provider", "off-dep", 200, 1.0)
    off.overhead("off-route", 0.001)
    off.stream_opened()
    off.first_token("off-unit", 0.1)
    off.output_rate("off-unit", 10, 1.0)
    off.queue(1)
    text = metrics.render().decode()
    assert "off-unit" not in text and "off-provider" not in text and "off-route" not in text
    assert REGISTRY.get_sample_value("llm_proxy_requests_in_flight") == before


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (errors.UpstreamTimeoutError("t"), "upstream_timeout"),
        (errors.UpstreamConnectError("c"), "upstream_connect"),
        (
            errors.UpstreamStatusError("s", status=502, type="anything-upstream-says"),
            "upstream_status",
        ),
        (errors.ModelNotFoundError("m"), "model_not_found"),
        (errors.RateLimitedError("r"), "rate_limited"),
        (errors.ProxyError("p"), "proxy"),
        (asyncio.CancelledError(), "client_closed"),
        (KeyError("bug"), "internal"),
    ],
)
def test_error_type_is_the_error_class_in_snake_case(exc: BaseException, expected: str) -> None:
    """error_type_of names the class, never the (upstream-chosen) message or type field."""
    assert error_type_of(exc) == expected
    assert error_type_of(exc) == expected  # cached


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, "2xx"), (299, "2xx"), (404, "4xx"), (503, "5xx"), (0, "none"), (999, "none")],
)
def test_status_class(status: int, expected: str) -> None:
    """Upstream statuses collapse to their class; no answer is `none`."""
    assert status_class(status) == expected


async def test_the_loop_lag_monitor_sees_a_blocked_loop() -> None:
    """A loop blocked for 50 ms shows up as about 50 ms of lag."""
    before = value("llm_proxy_event_loop_lag_seconds_sum")
    count = value("llm_proxy_event_loop_lag_seconds_count")
    task = metrics.start_loop_lag_monitor(asyncio.get_running_loop(), interval=0.01)
    await asyncio.sleep(0)  # let it schedule its first probe
    time.sleep(0.05)  # noqa: ASYNC251  (blocking the loop is the point)
    await asyncio.sleep(0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value("llm_proxy_event_loop_lag_seconds_count") >= count + 1
    assert value("llm_proxy_event_loop_lag_seconds_sum") - before >= 0.03


_WORKER = """
import sys
from proxy.metrics import Recorder
rec = Recorder(["m"])
rec.started(); rec.stream_opened(); rec.queue(1)
rec.finished("chat", "m", 200, 0.01)
rec.tokens("m", 10, 5)
rec.upstream("openai", "d", 200, 0.01)
if sys.argv[1] == "exit":
    from proxy.metrics import process_exited
    import os
    process_exited(os.getpid())
"""


def test_multiprocess_mode_sums_counters_and_live_gauges(tmp_path: Path) -> None:
    """Two worker processes' counters add up; gauges count only workers still alive."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for mode in ("stay", "exit"):
        subprocess.run([sys.executable, "-c", _WORKER, mode], env=env, check=True, timeout=30)
    scrape = subprocess.run(
        [sys.executable, "-c", "from proxy.metrics import render; print(render().decode())"],
        env=env,
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    ).stdout
    samples = dict(
        line.rsplit(" ", 1) for line in scrape.splitlines() if line.startswith("llm_proxy_")
    )
    assert float(samples['llm_proxy_requests_total{model="m",route="chat",status="200"}']) == 2
    assert float(samples['llm_proxy_tokens_total{kind="prompt",model="m"}']) == 20
    assert (
        float(
            samples[
                'llm_proxy_upstream_requests_total{deployment="d",provider="openai",status="2xx"}'
            ]
        )
        == 2
    )
    # The "stay" worker never said it exited, so its gauges still count: livesum.
    assert float(samples["llm_proxy_streams_open"]) == 1
    assert float(samples["llm_proxy_queue_depth"]) == 1


def test_dependency_calls_are_timed_and_failures_counted() -> None:
    recorder = metrics.Recorder(["m"])
    timer = recorder.timer("redis", "limiter-test")
    timer(0.002, True)
    timer(0.5, False)
    labels = {"dependency": "redis", "operation": "limiter-test"}
    count = REGISTRY.get_sample_value("llm_proxy_dependency_duration_seconds_count", labels)
    errors = REGISTRY.get_sample_value("llm_proxy_dependency_errors_total", labels)
    assert (count, errors) == (2, 1)
    off = metrics.Recorder(["m"], enabled=False)
    off.timer("redis", "limiter-test")(0.1, False)
    assert REGISTRY.get_sample_value("llm_proxy_dependency_errors_total", labels) == 1


class _Key:
    def __init__(self, alias: str | None, spend: float, budget: float | None) -> None:
        self.token_hash = (alias or "anon").encode().hex().ljust(64, "0")
        self.key_alias = alias
        self.spend = spend
        self.max_budget = budget


class _Keys:
    def __init__(self, records: list[_Key]) -> None:
        self.records = records

    async def list_keys(
        self, *, user_id: str | None, team_id: str | None, limit: int, offset: int
    ) -> list[_Key]:
        return self.records[offset : offset + limit]


async def test_top_keys_exports_only_the_biggest_spenders() -> None:
    """N keys by spend, labelled by alias (hash prefix without one); dropped keys vanish."""
    keys = [_Key(f"team-{i}", float(i), 100.0) for i in range(1200)] + [_Key(None, 5000.0, None)]
    top = metrics.TopKeys()
    await top.refresh(_Keys(keys), 3)
    families = {f.name: f for f in top.collect()}
    spend = {s.labels["key"]: s.value for s in families["llm_proxy_key_spend_usd"].samples}
    anon = keys[-1].token_hash[:12]
    assert spend == {anon: 5000.0, "team-1199": 1199.0, "team-1198": 1198.0}
    left = families["llm_proxy_key_budget_remaining_usd"].samples
    assert {s.labels["key"]: s.value for s in left} == {"team-1199": 0.0, "team-1198": 0.0}
    await top.refresh(_Keys(keys[:2]), 3)
    spend = {s.labels["key"]: s.value for s in next(iter(top.collect())).samples}
    assert spend == {"team-1": 1.0, "team-0": 0.0}
