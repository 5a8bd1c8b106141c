"""Rendering the kustomize overlays once per session, and finding the deploy tools.

A tool that is missing skips its tests on a developer's machine and fails them under
CI=true, so a CI machine without kubectl cannot pass by validating nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "staging", "production")
# Components no overlay uses, rendered on top of the base so that they are checked too.
EXTRA_VARIANTS = {"base+keda": ("components/keda",), "base+backup": ("components/backup",)}

Manifest = dict[str, Any]
Render = Callable[[str], list[Manifest]]


def find_tool(name: str) -> str:
    """The tool's path: on PATH or beside this Python (the venv's bin)."""
    found = shutil.which(name)
    beside = Path(sys.executable).parent / name
    if found is None and beside.exists():
        found = str(beside)
    if found is None:
        message = f"{name} is not installed (see deploy/README.md, 'Validation')"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def kustomize(path: Path) -> list[Manifest]:
    kubectl = find_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    """Render an overlay (or an extra variant) with kubectl kustomize, cached per session."""
    cache: dict[str, list[Manifest]] = {}

    def rendered(name: str) -> list[Manifest]:
        if name not in cache:
            if name in EXTRA_VARIANTS:
                cache[name] = kustomize(_variant_dir(tmp_path_factory, name))
            else:
                cache[name] = kustomize(K8S / "overlays" / name)
        return cache[name]

    return rendered


def _variant_dir(factory: pytest.TempPathFactory, name: str) -> Path:
    # kustomize takes only relative paths to bases and components.
    where = factory.mktemp("variant")
    relative = lambda sub: os.path.relpath(K8S / sub, where)  # noqa: E731
    (where / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "llm-proxy",
                "resources": [relative("base")],
                "components": [relative(c) for c in EXTRA_VARIANTS[name]],
            }
        )
    )
    return where


def objects(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Manifest], kind: str, name: str = "llm-proxy") -> Manifest:
    found = [d for d in objects(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]
