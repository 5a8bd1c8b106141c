"""Every overlay renders, validates offline against the Kubernetes schemas, and keeps the
policy deploy/README.md promises: limits, probes the app serves, a locked-down pod, only
environment variables the proxy reads, and the autoscaling targets.

kubernetes-validate has no schemas for custom resources (ServiceMonitor, PrometheusRule,
ScaledObject, ExternalSecret, SealedSecret): they are skipped there and their shape is
checked here instead.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv
from sanic import Sanic

from proxy.settings import ENV_PREFIX, Settings, load_settings
from tests.deploy.conftest import (
    EXTRA_VARIANTS,
    K8S,
    OVERLAYS,
    ROOT,
    Manifest,
    Render,
    kustomize,
    objects,
    one,
)

VARIANTS = (*OVERLAYS, *EXTRA_VARIANTS)
# The oldest Kubernetes deploy/README.md supports, and the newest the validator knows.
K8S_VERSIONS = ("1.25.0", kv.latest_version())
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("external-secrets.io/v1", "ExternalSecret"),
    ("bitnami.com/v1alpha1", "SealedSecret"),
}
SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
SECRET = "llm-proxy-secrets"

# Environment variables the proxy reads itself, each found in one of SOURCES below.
READ_BY_PROXY = {
    "LLM_PROXY_CONFIG",
    "LLM_PROXY_MASTER_KEY",
    "LLM_PROXY_HOST",
    "LLM_PROXY_PORT",
    "LLM_PROXY_WORKERS",
    "LLM_PROXY_LOG_LEVEL",
    "PROMETHEUS_MULTIPROC_DIR",
    "DATABASE_URL",
    "REDIS_URL",
    "LLM_PROXY_SQLITE_PATH",
    "LLM_PROXY_SPILL_DIR",
}
SOURCES = ("proxy/settings.py", "proxy/server.py", "proxy/__main__.py")
# Where the pods mount llm-proxy-secrets; NAME_FILE names the file of key NAME there.
SECRET_DIR = "/var/run/secrets/llm-proxy"
# Values for the keys of a Secret whose contents are not in the repository (sealed, synced).
STAND_INS = {
    "DATABASE_URL": "postgresql://proxy:pw@postgres:5432/llm_proxy",
    "REDIS_URL": "redis://proxy:pw@redis:6379/0",
}


def _proxy_container(docs: list[Manifest]) -> Manifest:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "llm-proxy")


def _pod_specs(docs: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for deployment in objects(docs, "Deployment"):
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]


def _proxy_config(docs: list[Manifest]) -> str:
    maps = [d for d in objects(docs, "ConfigMap") if d["metadata"]["name"].startswith("llm-proxy")]
    assert len(maps) == 1
    return str(maps[0]["data"]["config.yaml"])


def _config_env_refs(text: str) -> set[str]:
    """Names of the os.environ/NAME values in a proxy config (comments aside)."""

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
        elif isinstance(node, str) and node.startswith(ENV_PREFIX):
            yield node.removeprefix(ENV_PREFIX)

    return set(walk(yaml.safe_load(text)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_core_object_passes_strict_schema_validation(render: Render, variant: str) -> None:
    """kubernetes-validate --strict accepts every core object, on the oldest and newest version."""
    for doc in render(variant):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc}")


def test_strict_validation_rejects_an_unknown_field(render: Render) -> None:
    """The validator is strict: a misspelt field fails, so a pass means something."""
    deployment = one(render("production"), "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_only_known_custom_resources_appear(render: Render) -> None:
    """Anything without a core schema is one of the custom kinds checked by shape below."""
    for variant in VARIANTS:
        for doc in render(variant):
            key = (doc["apiVersion"], doc["kind"])
            try:
                kv.validate(doc, K8S_VERSIONS[-1], strict=True)
            except kv.SchemaNotFoundError:
                assert key in CUSTOM_KINDS, key


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_has_limits_probes_and_a_locked_down_context(
    render: Render, variant: str
) -> None:
    """Requests, limits, both probes, non-root, read-only root, no escalation, no capabilities."""
    for name, pod in _pod_specs(render(variant)):
        assert pod.get("automountServiceAccountToken") is False, name
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), where
            assert "livenessProbe" in c and "readinessProbe" in c, where
            ctx = c["securityContext"]
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where


def test_probe_paths_are_routes_of_the_app() -> None:
    """Each HTTP probe path in the manifests is a GET route of proxy.app.create_app."""
    from proxy.app import create_app

    app = create_app(Settings())
    try:
        routes = {r.uri for r in app.router.routes if "GET" in r.methods}
    finally:
        Sanic.unregister_app(app)
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    paths = {
        container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {"/health", "/ready"}
    assert paths <= routes


@pytest.mark.parametrize("variant", OVERLAYS)
def test_probes_target_the_port_the_proxy_listens_on(render: Render, variant: str) -> None:
    """Probe ports resolve to the container port, which is server.port in the ConfigMap."""
    docs = render(variant)
    container = _proxy_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = yaml.safe_load(_proxy_config(docs))
    assert ports == {"http": config["server"]["port"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert ports.get(port, port) == config["server"]["port"], probe
    service = one(docs, "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "metrics": "http",  # /metrics shares the API port until it gets its own
    }


def test_env_names_the_proxy_reads_are_in_its_source() -> None:
    """The test's list of variables the proxy reads matches proxy/ (settings, server, CLI)."""
    source = "".join((ROOT / path).read_text() for path in SOURCES)
    for name in READ_BY_PROXY:
        assert f'"{name}"' in source, name


@pytest.mark.parametrize("variant", OVERLAYS)
def test_every_env_var_set_is_read_by_the_proxy(render: Render, variant: str) -> None:
    """Each variable is read by the proxy or is a provider key its config names; secrets
    are NAME_FILE variables naming the mounted Secret's key NAME, never values."""
    docs = render(variant)
    config_refs = _config_env_refs(_proxy_config(docs))
    for var in _proxy_container(docs)["env"]:
        name = var["name"]
        read_as = name.removesuffix("_FILE")
        assert read_as in READ_BY_PROXY or read_as in config_refs, name
        assert not name.endswith(("_KEY", "_URL")), f"{name}: mount it, set {name}_FILE"
        assert "valueFrom" not in var, f"{name}: a secret in the environment"
        if name.endswith("_FILE"):
            assert var["value"] == f"{SECRET_DIR}/{read_as}", name
    assert "envFrom" not in _proxy_container(docs)


@pytest.mark.parametrize("variant", OVERLAYS)
def test_the_config_map_loads_and_matches_the_pod(
    render: Render, variant: str, tmp_path: Path
) -> None:
    """With the overlay's Secret laid out as the kubelet mounts it, the shipped config loads
    with the pod's environment; every secret is file-backed; workers equal the CPU request."""
    docs = render(variant)
    container = _proxy_container(docs)
    mounted = tmp_path / "secrets"
    mounted.mkdir()
    values = _secret_values(docs)
    for key, value in values.items():
        (mounted / key).write_text(value)
    env = {v["name"]: v["value"].replace(SECRET_DIR, str(mounted)) for v in container["env"]}
    path = tmp_path / "config.yaml"
    path.write_text(_proxy_config(docs))
    settings = load_settings(str(path), env, warn=print)
    assert settings.master_key == values["LLM_PROXY_MASTER_KEY"]
    assert settings.database.url == values["DATABASE_URL"]
    assert settings.limits.redis_url == values["REDIS_URL"]
    rotated = {f.name for f in settings.secret_files}
    assert rotated == {f"{key}_FILE" for key in values}, "each secret re-read on change"
    providers = {e.params.model.split("/")[0] for e in settings.model_list}
    assert ("openai" in providers) == ("OPENAI_API_KEY" in values)
    assert int(env["LLM_PROXY_WORKERS"]) == settings.server.workers
    assert container["resources"]["requests"]["cpu"] == str(settings.server.workers)


def _secret_values(docs: list[Manifest]) -> dict[str, str]:
    """The keys of the overlay's llm-proxy-secrets: real values where committed (dev)."""
    secrets = [s for s in objects(docs, "Secret") if s["metadata"]["name"].startswith(SECRET)]
    if secrets:
        (secret,) = secrets
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    (maker,) = objects(docs, "SealedSecret") + objects(docs, "ExternalSecret")
    return {key: STAND_INS.get(key, f"test-{key}") for key in _secret_keys(maker)}


@pytest.mark.parametrize("variant", OVERLAYS)
def test_shutdown_fits_in_the_grace_period(render: Render, variant: str) -> None:
    """terminationGracePeriodSeconds covers the preStop sleep plus the proxy's drain time."""
    docs = render(variant)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sleep = int(_proxy_container(docs)["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = yaml.safe_load(_proxy_config(docs))["server"]["graceful_shutdown_seconds"]
    assert pod["terminationGracePeriodSeconds"] > sleep + drain
    strategy = one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxSurge": 1, "maxUnavailable": 0}


@pytest.mark.parametrize("variant", ["staging", "production"])
def test_the_hpa_targets_are_70_80_100_50(render: Render, variant: str) -> None:
    """CPU 70%, memory 80%, 100 req/s and 50 queued per pod; scale down slower than up."""
    hpa = one(render(variant), "HorizontalPodAutoscaler")["spec"]
    targets = {}
    for metric in hpa["metrics"]:
        if metric["type"] == "Resource":
            targets[metric["resource"]["name"]] = metric["resource"]["target"]
        else:
            targets[metric["pods"]["metric"]["name"]] = metric["pods"]["target"]
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
        "llm_proxy_requests_per_second": {"type": "AverageValue", "averageValue": "100"},
        "llm_proxy_queue_depth": {"type": "AverageValue", "averageValue": "50"},
    }
    behavior = hpa["behavior"]
    down, up = behavior["scaleDown"], behavior["scaleUp"]
    assert down["stabilizationWindowSeconds"] > up["stabilizationWindowSeconds"]


def test_the_adapter_serves_the_hpa_metrics_from_series_the_proxy_exports(render: Render) -> None:
    """prometheus-adapter's rules read metrics proxy.metrics defines and name the HPA's."""
    from proxy import metrics

    exported = {metrics.QUEUE_DEPTH.describe()[0].name}
    exported |= {f"{metrics.REQUESTS.describe()[0].name}_total"}
    (adapter,) = kustomize(K8S / "components" / "prometheus-adapter")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    served = {}
    for rule in rules:
        series = rule["seriesQuery"].split("{")[0].strip("'")
        assert series in exported, series
        served[rule["name"]["as"]] = series
    hpa = one(render("production"), "HorizontalPodAutoscaler")["spec"]
    wanted = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    assert wanted == set(served)


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_use_only_name_and_instance(render: Render, variant: str) -> None:
    """Every selector of ours uses exactly app.kubernetes.io/name and instance."""
    docs = render(variant)
    selectors: list[tuple[str, dict[str, str]]] = []
    for d in docs:
        kind, spec = d["kind"], d.get("spec", {})
        if kind == "Deployment":
            selectors.append((kind, spec["selector"]["matchLabels"]))
            template = spec["template"]
            assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
            affinity = template["spec"].get("affinity", {}).get("podAntiAffinity", {})
            for term in affinity.get("preferredDuringSchedulingIgnoredDuringExecution", []):
                selectors.append(("podAntiAffinity", term["podAffinityTerm"]["labelSelector"]))
            for spread in template["spec"].get("topologySpreadConstraints", []):
                selectors.append(("topologySpread", spread["labelSelector"]["matchLabels"]))
        elif kind == "Service":
            selectors.append((kind, spec["selector"]))
        elif kind in ("PodDisruptionBudget", "ServiceMonitor"):
            selectors.append((kind, spec["selector"]["matchLabels"]))
        elif kind == "NetworkPolicy":
            selectors.append((kind, spec["podSelector"]["matchLabels"]))
    assert selectors
    for kind, selector in selectors:
        labels = selector.get("matchLabels", selector)
        assert set(labels) == SELECTOR_KEYS, (kind, selector)


def test_overlays_size_and_pin_as_documented(render: Render) -> None:
    """dev: one pod, no HPA; production: 3+ pods, image by digest; no tag is `latest`."""
    dev = render("dev")
    assert one(dev, "Deployment")["spec"]["replicas"] == 1
    assert not objects(dev, "HorizontalPodAutoscaler")
    assert {d["metadata"]["name"] for d in objects(dev, "Deployment")} == {
        "llm-proxy",
        "redis",
        "postgres",
    }
    production = render("production")
    assert one(production, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 3
    assert "replicas" not in one(production, "Deployment")["spec"]  # the HPA owns it
    assert re.fullmatch(r"[\w./-]+@sha256:[0-9a-f]{64}", _proxy_container(production)["image"])
    for variant in OVERLAYS:
        for _, pod in _pod_specs(render(variant)):
            for c in pod["containers"]:
                assert not c["image"].endswith(":latest") and ":" in c["image"], c["image"]


@pytest.mark.parametrize("variant", ["staging", "production"])
def test_no_plain_secret_is_committed_outside_dev(render: Render, variant: str) -> None:
    """Staging and production get llm-proxy-secrets from a SealedSecret or an ExternalSecret."""
    docs = render(variant)
    assert not objects(docs, "Secret")
    makers = objects(docs, "SealedSecret") + objects(docs, "ExternalSecret")
    assert len(makers) == 1
    file_keys = {
        v["value"].removeprefix(SECRET_DIR + "/")
        for v in _proxy_container(docs)["env"]
        if v["name"].endswith("_FILE")
    }
    assert _secret_keys(makers[0]) == file_keys


def _secret_keys(maker: Manifest) -> set[str]:
    spec = maker["spec"]
    if maker["kind"] == "SealedSecret":
        assert spec["template"]["metadata"]["name"] == SECRET
        return set(spec["encryptedData"])
    assert spec["target"]["name"] == SECRET
    assert spec["secretStoreRef"]["kind"] in ("SecretStore", "ClusterSecretStore")
    return {item["secretKey"] for item in spec["data"]}


def test_the_secret_template_validates_and_lists_every_key(render: Render) -> None:
    """The example Secret is a valid Secret with exactly the keys the Deployment reads."""
    template = K8S / "components" / "secrets" / "example" / "secret.example.yaml"
    (doc,) = yaml.safe_load_all(template.read_text())
    kv.validate(doc, K8S_VERSIONS[-1], strict=True)
    assert all(value.startswith("<") for value in doc["stringData"].values())
    external = one(render("production"), "ExternalSecret", SECRET)
    assert set(doc["stringData"]) == _secret_keys(external)


def _check_service_monitor(doc: Manifest, docs: list[Manifest]) -> None:
    ports = {p["name"] for p in one(docs, "Service")["spec"]["ports"]}
    for endpoint in doc["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


def _check_prometheus_rule(doc: Manifest, docs: list[Manifest]) -> None:
    rules = [r for g in doc["spec"]["groups"] for r in g["rules"]]
    assert rules
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info")


def _check_scaled_object(doc: Manifest, docs: list[Manifest]) -> None:
    spec = doc["spec"]
    assert spec["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert not objects(docs, "HorizontalPodAutoscaler"), "KEDA makes its own HPA"
    values = {t["type"]: t["metadata"].get("value") for t in spec["triggers"]}
    assert values["cpu"] == "70" and values["memory"] == "80"
    thresholds = sorted(
        t["metadata"]["threshold"] for t in spec["triggers"] if t["type"] == "prometheus"
    )
    assert thresholds == ["100", "50"]


def _check_secret_maker(doc: Manifest, docs: list[Manifest]) -> None:
    assert _secret_keys(doc)


SHAPE_CHECKS: dict[str, Any] = {
    "ServiceMonitor": _check_service_monitor,
    "PrometheusRule": _check_prometheus_rule,
    "ScaledObject": _check_scaled_object,
    "ExternalSecret": _check_secret_maker,
    "SealedSecret": _check_secret_maker,
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_resources_have_the_expected_shape(render: Render, variant: str) -> None:
    """Custom resources name what they act on correctly (no schema validates them offline)."""
    docs = render(variant)
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == "llm-proxy"
            assert doc["metadata"]["labels"].keys() >= SELECTOR_KEYS
            SHAPE_CHECKS[doc["kind"]](doc, docs)


@pytest.mark.parametrize("variant", ["staging", "production"])
def test_migration_job_runs_the_cli_safely(render: Render, variant: str) -> None:
    """The migration Job runs `llm-proxy migrate` (a real command), hardened like the pods."""
    from proxy.__main__ import _parser

    docs = render(variant)
    job = one(docs, "Job", "llm-proxy-migrate")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "migrate"
    _parser().parse_args(container["args"])  # the CLI accepts exactly these arguments
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert pod["restartPolicy"] == "Never"
    env = {e["name"]: e for e in container["env"]}
    assert env["DATABASE_URL_FILE"]["value"] == f"{SECRET_DIR}/DATABASE_URL"
    assert _secret_volume(pod, container) == SECRET


def _capacity_figures() -> dict[str, Any]:
    return dict(json.loads((ROOT / "bench" / "capacity.json").read_text()))


@pytest.mark.parametrize("variant", ["staging", "production"])
def test_the_hpa_targets_match_bench_readme_capacity_figures(render: Render, variant: str) -> None:
    """The HPA and resources are what bench/capacity.py measured against, and the figures agree."""
    from loadtests.capacity import targets_from

    docs = render(variant)
    figures = _capacity_figures()
    found = figures["findings"]
    targets = targets_from(one(docs, "Deployment"), one(docs, "HorizontalPodAutoscaler"))
    # Measured against these very settings: a change to either needs a new capacity run.
    assert figures["targets"] == {
        "cpu_request_millicores": targets.cpu_request_millicores,
        "memory_request_mib": targets.memory_request_mib,
        "memory_limit_mib": targets.memory_limit_mib,
        "cpu_utilization": targets.cpu_utilization,
        "memory_utilization": targets.memory_utilization,
        "requests_per_second": targets.requests_per_second,
        "load_metric": targets.load_metric,
        "load_value": targets.load_value,
    }
    assert found["agrees"] is True, found["verdict"]
    # The rate target fires first; CPU, then memory, are the backstops.
    assert found["order"][0] == f"requests/s {targets.requests_per_second:g}"
    assert found["cpu_target_rps"] > targets.requests_per_second
    memory_target = targets.memory_request_mib * targets.memory_utilization / 100
    assert found["peak_rss_mb"] < memory_target < targets.memory_limit_mib


def test_bench_readme_quotes_the_capacity_figures() -> None:
    """bench/README.md's Capacity section states the figures bench/capacity.json holds."""
    found = _capacity_figures()["findings"]
    readme = (ROOT / "bench" / "README.md").read_text()
    section = readme.split("\n## Capacity", 1)[1].split("\n## ", 1)[0]
    assert f"{found['cpu_target_rps']:,} req/s" in section
    assert f"{found['peak_rss_mb']:.0f} MB" in section
    added = "/".join(f"{a:+.2f}" for a in found["added_ms_at_rate_target"])
    assert added in section
    assert found["verdict"] in section


def test_capacity_figures_come_from_a_replica_limited_to_one_core() -> None:
    """The recorded run stepped a rising load, the rate target among it, on one pinned core."""
    figures = _capacity_figures()
    steps = figures["steps"]
    rates = [s["offered_rps"] for s in steps]
    assert rates == sorted(rates) and len(rates) >= 5
    assert figures["targets"]["requests_per_second"] in rates
    assert all(s["cpu_millicores"] <= 1000 * 1.05 for s in steps)  # taskset: one core


def _secret_volume(pod: Manifest, container: Manifest) -> str:
    """The Secret mounted at SECRET_DIR: read-only, whole (no subPath), group-readable only."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == SECRET_DIR]
    assert mount.get("readOnly") is True and "subPath" not in mount  # subPath never updates
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]
    return str(volume["secret"]["secretName"])


@pytest.mark.parametrize("variant", OVERLAYS)
def test_secrets_are_files_from_the_one_secret(render: Render, variant: str) -> None:
    """The proxy pods mount llm-proxy-secrets read-only; no container of ours takes it as env."""
    docs = render(variant)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert _secret_volume(pod, _proxy_container(docs)).startswith(SECRET)
    for _, spec in _pod_specs(docs):
        for container in spec["containers"]:
            assert "envFrom" not in container
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef", {})
                assert not ref.get("name", "").startswith(SECRET), (container["name"], var)


@pytest.mark.parametrize("variant", ["staging", "production"])
def test_provider_keys_are_mounted_where_the_secret_holds_them(
    render: Render, variant: str
) -> None:
    """The Secret makers bring the provider-keys component: both keys are read from files."""
    env = {v["name"]: v for v in _proxy_container(render(variant))["env"]}
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert env[f"{key}_FILE"]["value"] == f"{SECRET_DIR}/{key}"


def test_dev_runs_without_provider_keys(render: Render, tmp_path: Path) -> None:
    """Dev's Secret has no provider keys, so its pod names none (a missing file would stop it)."""
    names = {v["name"] for v in _proxy_container(render("dev"))["env"]}
    assert not names & {"OPENAI_API_KEY_FILE", "ANTHROPIC_API_KEY_FILE"}
