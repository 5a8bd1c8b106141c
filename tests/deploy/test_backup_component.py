"""The backup component (a nightly CronJob running deploy/scripts/backup.sh) renders on the
base, validates strictly against the Kubernetes schemas, and runs locked down with the
proxy's DATABASE_URL and the very script the integration tests exercise.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as kv

from tests.deploy.conftest import K8S, ROOT, Manifest, kustomize, objects, one

SCRIPT = ROOT / "deploy" / "scripts" / "backup.sh"
COMPONENT = K8S / "components" / "backup"
K8S_VERSIONS = ("1.25.0", kv.latest_version())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    """The base with the backup component, rendered by kubectl kustomize."""
    where = tmp_path_factory.mktemp("base-backup")
    (where / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "llm-proxy",
                "resources": [os.path.relpath(K8S / "base", where)],
                "components": [os.path.relpath(COMPONENT, where)],
            }
        )
    )
    return kustomize(where)


def test_the_component_copy_of_the_script_is_the_script() -> None:
    """kustomize reads only below the component, so it holds a copy: kept identical."""
    assert (COMPONENT / "backup.sh").read_bytes() == SCRIPT.read_bytes()


def test_backup_objects_pass_strict_schema_validation(rendered: list[Manifest]) -> None:
    """The CronJob, its claim and its ConfigMap validate on the oldest and newest version."""
    names = {(d["kind"], d["metadata"]["name"].split("-")[-1]) for d in rendered}
    assert {("CronJob", "backup"), ("PersistentVolumeClaim", "backups")} <= names
    for doc in rendered:
        if doc["metadata"]["name"].startswith("llm-proxy-backup"):
            for version in K8S_VERSIONS:
                kv.validate(doc, version, strict=True)


def test_backup_job_is_locked_down_and_runs_the_script(rendered: list[Manifest]) -> None:
    """Non-root, read-only root, no token, one run at a time; the script comes from git."""
    cron = one(rendered, "CronJob", "llm-proxy-backup")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    env = {e["name"]: e for e in container["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "llm-proxy-secrets",
        "key": "DATABASE_URL",
    }
    assert env["BACKUP_DIR"]["value"] == "/backups"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["backups"] == "/backups"
    script = Path(container["command"][-1])
    assert mounts["script"] == str(script.parent)
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = volumes["script"]["configMap"]["name"]
    [generated] = [d for d in objects(rendered, "ConfigMap") if d["metadata"]["name"] == config_map]
    assert generated["data"][script.name] == SCRIPT.read_text()
    claim = volumes["backups"]["persistentVolumeClaim"]["claimName"]
    assert one(rendered, "PersistentVolumeClaim", claim)
