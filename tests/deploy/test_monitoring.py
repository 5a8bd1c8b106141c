"""deploy/monitoring: the alerts pass promtool's checks and unit tests, the PrometheusRule
carries exactly the same rules, and the dashboard is a valid Grafana model whose queries
parse and read only metrics that exist (or are documented as coming).

``.venv/bin/python -m tests.deploy.test_monitoring`` rewrites the PrometheusRule from
deploy/monitoring/alerts.yaml, the one source of truth.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import K8S, ROOT, Render, find_tool, kustomize, one

MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULE_COMPONENT = K8S / "components" / "prometheusrule"
RULE_FILE = RULE_COMPONENT / "prometheusrule.yaml"
RULE_HEADER = """\
# Generated from deploy/monitoring/alerts.yaml; do not edit here. Change alerts.yaml, then
# run `.venv/bin/python -m tests.deploy.test_monitoring` (tests/deploy checks they match).
"""
# Metrics of features being built: read by alerts and listed in deploy/monitoring/README.md,
# exported once the feature lands (then drop them from here).
NOT_EXPORTED_YET: set[str] = set()
_METRIC = re.compile(r"\bllm_proxy_[a-z0-9_]+")


def alert_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text())["groups"]
    return groups


def alert_names() -> set[str]:
    return {r["alert"] for g in alert_groups() for r in g["rules"] if "alert" in r}


def prometheus_rule() -> dict[str, Any]:
    """The PrometheusRule object for alerts.yaml's groups."""
    labels = {"app.kubernetes.io/name": "llm-proxy", "app.kubernetes.io/instance": "llm-proxy"}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "llm-proxy", "labels": labels},
        "spec": {"groups": alert_groups()},
    }


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def render_prometheus_rule() -> str:
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, _block_strings)
    body = yaml.dump(prometheus_rule(), Dumper=Dumper, sort_keys=False, width=100)
    return RULE_HEADER + body


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    return [r["expr"] for g in alert_groups() for r in g["rules"]]


def metric_names(exprs: list[str]) -> set[str]:
    """The llm_proxy_* series the expressions read (recording rules, with a colon, are not)."""
    return {m for e in exprs for m in _METRIC.findall(e)}


def defined_series() -> set[str]:
    """The series names proxy.metrics can export (a histogram's three, a counter's _total)."""
    from prometheus_client import Counter, Gauge, Histogram

    from proxy import metrics

    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge | Histogram):
            family = value.describe()[0]
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def _promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    tool = find_tool("promtool")
    return subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts alerts.yaml."""
    result = _promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_on_bad_series_and_not_on_good_ones() -> None:
    """`promtool test rules` passes: each alert fires where it should and nowhere else."""
    result = _promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_promtool_case() -> None:
    """Each alert of alerts.yaml is expected to fire in at least one promtool test."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == alert_names()


def test_every_alert_routes_by_severity_and_explains_itself() -> None:
    """Each alert has a known severity and a summary."""
    for group in alert_groups():
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
                assert rule["annotations"]["summary"], rule


def test_the_prometheusrule_is_generated_from_alerts_yaml() -> None:
    """The component's PrometheusRule is exactly what alerts.yaml generates."""
    assert RULE_FILE.read_text() == render_prometheus_rule(), (
        "deploy/k8s/components/prometheusrule/prometheusrule.yaml is stale: run "
        "`.venv/bin/python -m tests.deploy.test_monitoring`"
    )


@pytest.mark.parametrize("variant", ["staging", "production"])
def test_the_overlays_ship_the_alerts(render: Render, variant: str) -> None:
    """Staging and production render the PrometheusRule with alerts.yaml's groups."""
    rule = one(render(variant), "PrometheusRule")
    assert rule["metadata"]["namespace"] == "llm-proxy"
    assert rule["spec"]["groups"] == alert_groups()


def test_the_prometheusrule_component_renders_alone() -> None:
    """The component renders on its own kustomization too (what `kubectl kustomize` sees)."""
    docs = kustomize(RULE_COMPONENT)
    assert [d["kind"] for d in docs] == ["PrometheusRule"]


def test_alerts_and_dashboard_read_metrics_the_proxy_defines() -> None:
    """Every llm_proxy_* series used is defined in proxy.metrics or documented as coming."""
    used = metric_names(alert_exprs() + dashboard_exprs())
    missing = used - defined_series() - NOT_EXPORTED_YET
    assert not missing, missing
    readme = (MONITORING / "README.md").read_text()
    for name in NOT_EXPORTED_YET:
        assert name in readme


def test_the_dashboard_is_a_grafana_model_on_a_datasource_variable() -> None:
    """schemaVersion 39, a `datasource` variable every query uses, unique ids, a full grid."""
    data = dashboard()
    assert data["schemaVersion"] >= 39
    assert data["uid"] == "llm-proxy"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = {p["title"] for p in data["panels"]}
    for wanted in ("Request duration", "Proxy overhead", "Time to first token (streams)"):
        assert wanted in titles


def test_the_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables filled in, is valid PromQL for promtool."""
    fill = {"$__rate_interval": "5m", "$namespace": ".*", "$model": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        filled = expr
        for var, value in fill.items():
            filled = filled.replace(var, value)
        assert "$" not in filled, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": filled})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":
    RULE_FILE.write_text(render_prometheus_rule())
    print(f"wrote {RULE_FILE.relative_to(ROOT)}")
