"""The capacity report's arithmetic: rate plans, crossings, CPU fit and the HPA verdict."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loadtests import capacity
from loadtests.capacity import IN_FLIGHT, QUEUE_DEPTH, Step, Targets

TARGETS = Targets(
    cpu_request_millicores=1000,
    memory_request_mib=512,
    memory_limit_mib=1024,
    cpu_utilization=70,
    memory_utilization=80,
    requests_per_second=100,
    load_metric=QUEUE_DEPTH,
    load_value=50,
)


def _step(rps: float, cpu: float, *, achieved: float | None = None, rss: float = 190) -> Step:
    """A step where the proxy adds 1/2/3 ms and holds rps * 0.05 requests in flight."""
    return Step(
        offered_rps=rps,
        achieved_rps=rps if achieved is None else achieved,
        cpu_millicores=cpu,
        rss_mb=rss,
        p50_ms=51.0,
        p95_ms=52.0,
        p99_ms=53.0,
        direct_p50_ms=50.0,
        direct_p95_ms=50.0,
        direct_p99_ms=50.0,
        error_rate=0.0,
        in_flight_mean=rps * 0.05,
        in_flight_max=rps * 0.06,
        queue_depth_mean=0.0,
        queue_depth_max=0.0,
    )


# 40 m idle plus 0.4 ms of CPU per request, saturating a little above 2,000 req/s.
STEPS = [_step(r, 40 + 0.4 * r) for r in (50, 100, 200, 400, 800, 1600)] + [
    _step(3200, 1000, achieved=2100)
]


def test_plan_rates_is_geometric_sorted_and_includes_the_rate_target() -> None:
    """Rates grow by the factor, end at stop and always include the requested extras."""
    assert capacity.plan_rates(50, 400, 2, include=[100, 5000]) == [50, 100, 200, 400]
    assert capacity.plan_rates(50, 300, 2) == [50, 100, 200, 300]
    assert capacity.plan_rates(10, 10, 1.5) == [10]


@pytest.mark.parametrize(("start", "stop", "factor"), [(0, 10, 2), (20, 10, 2), (10, 20, 1)])
def test_plan_rates_rejects_a_plan_that_does_not_rise(
    start: float, stop: float, factor: float
) -> None:
    """A non-positive start, stop below start or a factor of 1 or less is refused."""
    with pytest.raises(ValueError, match="rates"):
        capacity.plan_rates(start, stop, factor)


def test_crossing_interpolates_between_points_in_x_order() -> None:
    """The level is reached between the two points that straddle it, whatever the input order."""
    assert capacity.crossing([300, 100, 200], [30, 10, 20], 25) == pytest.approx(250)
    assert capacity.crossing([100, 200], [30, 40], 25) == 100
    assert capacity.crossing([100, 200], [10, 20], 25) is None
    assert capacity.crossing([100], [30], 25) == 100


def test_value_at_interpolates_inside_the_range_only() -> None:
    """y is interpolated between measured points and None outside them."""
    assert capacity.value_at([100, 200], [1.0, 3.0], 150) == pytest.approx(2.0)
    assert capacity.value_at([100, 200], [1.0, 3.0], 200) == pytest.approx(3.0)
    assert capacity.value_at([100, 200], [1.0, 3.0], 50) is None
    assert capacity.value_at([100], [1.0], 100) == 1.0


def test_cpu_per_request_fits_the_unsaturated_steps() -> None:
    """The slope is CPU ms per request; the saturated step does not bend the fit."""
    assert capacity.cpu_per_request(STEPS) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="two unsaturated"):
        capacity.cpu_per_request(STEPS[:1])


def test_saturated_means_missing_the_rate_or_failing_requests() -> None:
    """Achieving under 90% of the offered rate, or over 1% errors, is saturation."""
    assert STEPS[-1].saturated()
    assert not STEPS[0].saturated()
    assert replace(STEPS[0], error_rate=0.02).saturated()


def test_analyse_finds_the_cpu_crossing_and_agrees_when_the_rate_target_leads() -> None:
    """CPU crosses 700 m between the 1,600 and the saturated 2,100 req/s steps: OK."""
    findings = capacity.analyse(STEPS, TARGETS)
    assert findings.cpu_target_rps == pytest.approx(1600 + 500 * 20 / 320)
    assert not findings.cpu_target_extrapolated
    assert findings.max_rps == 1600
    assert findings.added_ms_at_rate_target == pytest.approx((1.0, 2.0, 3.0))
    assert findings.in_flight_at_rate_target == pytest.approx(5.0)
    assert findings.in_flight_at_rate_llm == pytest.approx(200.0)
    assert [name for name, _ in findings.order][:2] == ["requests/s 100", "CPU 70%"]
    assert findings.agrees and findings.verdict.startswith("OK: CPU 70% target reached at 1,631")
    assert "rate target leads, as intended" in findings.verdict


def test_analyse_extrapolates_cpu_when_the_run_stopped_early() -> None:
    """Without a step over 700 m the crossing comes from the fitted line, and says so."""
    findings = capacity.analyse(STEPS[:4], TARGETS)
    assert findings.cpu_target_extrapolated
    assert findings.cpu_target_rps == pytest.approx(1650)
    assert "extrapolated" in findings.verdict


def test_analyse_disagrees_when_cpu_saturates_before_the_rate_target() -> None:
    """A replica that burns 700 m below 100 req/s needs a lower rate target."""
    steps = [_step(r, 40 + 10 * r) for r in (20, 50, 100)]
    findings = capacity.analyse(steps, TARGETS)
    assert not findings.agrees
    assert "before the 100 req/s rate target" in findings.verdict


def test_analyse_disagrees_when_in_flight_leads_for_llm_length_requests() -> None:
    """50 in flight with 2 s requests is 25 req/s: in flight would scale before the rate target."""
    findings = capacity.analyse(STEPS, replace(TARGETS, load_metric=IN_FLIGHT))
    assert not findings.agrees
    assert findings.load_target_rps == pytest.approx(25)
    assert f"scale on {QUEUE_DEPTH} instead" in findings.verdict
    assert findings.order[0][0] == f"{IN_FLIGHT} 50"


def test_analyse_disagrees_when_memory_reaches_its_target_or_limit() -> None:
    """Peak RSS over 80% of the request, or at the limit, asks for more memory."""
    over_target = [replace(s, rss_mb=450) for s in STEPS]
    assert "raise the memory request" in capacity.analyse(over_target, TARGETS).verdict
    over_limit = [replace(s, rss_mb=1100) for s in STEPS]
    assert "raise the memory limit" in capacity.analyse(over_limit, TARGETS).verdict


def test_queue_depth_target_fires_where_the_queue_builds() -> None:
    """With the queue depth target, the crossing follows the measured queue."""
    steps = [replace(s, queue_depth_mean=s.offered_rps / 20) for s in STEPS]
    findings = capacity.analyse(steps, TARGETS)
    assert findings.load_target_rps == pytest.approx(1000)


def test_tables_and_json_carry_the_figures() -> None:
    """The markdown table has a row per step; the JSON has targets, findings and steps."""
    findings = capacity.analyse(STEPS, TARGETS)
    table = capacity.steps_table(STEPS)
    assert table.count("\n") == len(STEPS) + 1
    assert "| 1,600 | 1,600 | 680 |" in table
    text = capacity.findings_text(findings, TARGETS)
    assert "700m) at 1,631 req/s" in text and "+1.00/+2.00/+3.00 ms" in text
    data = capacity.to_json(STEPS, TARGETS, findings, {"date": "2026-11-22"})
    assert data["targets"]["requests_per_second"] == 100
    assert data["findings"]["cpu_target_rps"] == 1631
    assert data["findings"]["agrees"] is True
    assert len(data["steps"]) == len(STEPS)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1000.0),
        ("500m", 500.0),
        (2, 2000.0),
        ("512Mi", 512.0),
        ("1Gi", 1024.0),
        ("2048Ki", 2.0),
    ],
)
def test_quantity_reads_kubernetes_cpu_and_memory(text: str | int, value: float) -> None:
    """CPU in millicores, memory in MiB, as the manifests write them."""
    assert capacity.quantity(text) == pytest.approx(value)


def test_targets_from_reads_the_pods_resources_and_the_hpa() -> None:
    """The proxy container's requests and limits and the HPA's four targets."""
    deployment = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "sidecar", "resources": {}},
                        {
                            "name": "llm-proxy",
                            "resources": {
                                "requests": {"cpu": "1", "memory": "512Mi"},
                                "limits": {"cpu": "2", "memory": "1Gi"},
                            },
                        },
                    ]
                }
            }
        }
    }

    def pods(name: str, value: str) -> dict[str, object]:
        target = {"type": "AverageValue", "averageValue": value}
        return {"type": "Pods", "pods": {"metric": {"name": name}, "target": target}}

    def resource(name: str, value: int) -> dict[str, object]:
        target = {"type": "Utilization", "averageUtilization": value}
        return {"type": "Resource", "resource": {"name": name, "target": target}}

    hpa = {
        "spec": {
            "metrics": [
                resource("cpu", 70),
                resource("memory", 80),
                pods("llm_proxy_requests_per_second", "100"),
                pods(QUEUE_DEPTH, "50"),
            ]
        }
    }
    assert capacity.targets_from(deployment, hpa) == TARGETS
