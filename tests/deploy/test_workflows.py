"""The GitHub Actions workflows: actionlint (with shellcheck on every ``run:``) passes, and
the release keeps its promises: a semver tag starts it, the test suite runs first against
real PostgreSQL and Redis, the image is built for amd64 and arm64, trivy fails the release
on CRITICAL findings, and only the scanned digest gets the semver tags.

The workflows cannot run here; these checks are what stands in for a run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT, find_tool

WORKFLOWS = ROOT / ".github" / "workflows"
PLATFORMS = {"linux/amd64", "linux/arm64"}
PINNED = re.compile(r"[^@\s]+@(v\d+|[0-9a-f]{40})")  # a major version or a full commit

Workflow = dict[str, Any]


def load(name: str) -> Workflow:
    raw: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as the boolean true.
    return {("on" if key is True else key): value for key, value in raw.items()}


def actionlint(*files: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("actionlint"), "-no-color", "-shellcheck", find_tool("shellcheck"), *files],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def steps_using(job: dict[str, Any], action: str) -> list[tuple[int, dict[str, Any]]]:
    """The job's steps (with their index) that use ``action`` at any version."""
    return [
        (i, step)
        for i, step in enumerate(job["steps"])
        if step.get("uses", "").split("@")[0] == action
    ]


def filter_regex(pattern: str) -> re.Pattern[str]:
    """A GitHub tag filter pattern as a regex (the subset: * + ? [..] and literals)."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if char == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        elif char == "*":
            out += "[^/]*"
        elif char in "+?":
            out += char
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out)


def test_actionlint_passes_on_the_workflows() -> None:
    """actionlint, with shellcheck for the scripts, reports nothing on any workflow."""
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "release.yml"}
    result = actionlint(*files, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "reported"),
    [
        ("needs: test", "needs: tests", "needs"),
        ("steps.build.outputs.digest }}\n", "steps.biuld.outputs.digest }}\n", "biuld"),
        ("runs-on: ubuntu-24.04", "runs-on: [ubuntu-24.04\n", "yaml"),
        ('echo "pushed $IMAGE@$DIGEST"', 'echo "pushed $IMAGE@$DIGEST', "shellcheck"),
    ],
    ids=["unknown-job", "unknown-step", "broken-yaml", "shell-syntax"],
)
def test_actionlint_fails_on_a_broken_release_workflow(
    tmp_path: Path, old: str, new: str, reported: str
) -> None:
    """A copy of release.yml with one mistake makes actionlint exit non-zero, naming it."""
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    shutil.copy(WORKFLOWS / "ci.yml", workflows)
    text = (WORKFLOWS / "release.yml").read_text()
    assert old in text
    broken = workflows / "release.yml"
    broken.write_text(text.replace(old, new, 1))
    result = actionlint(broken, cwd=tmp_path)
    assert result.returncode != 0
    assert reported in result.stdout.lower(), result.stdout


def test_release_starts_on_semver_tags_only() -> None:
    """Pushing v1.2.3 (or v1.2.3-rc.1) starts a release; branches and other tags do not."""
    on = load("release.yml")["on"]
    assert set(on) == {"push"}
    assert set(on["push"]) == {"tags"}
    patterns = [filter_regex(p) for p in on["push"]["tags"]]

    def starts(tag: str) -> bool:
        return any(p.fullmatch(tag) for p in patterns)

    assert all(starts(t) for t in ("v1.2.3", "v0.1.0", "v10.20.30", "v1.2.3-rc.1"))
    assert not any(starts(t) for t in ("v1.2", "1.2.3", "vx.y.z", "latest", "v1.2.3.4"))


def test_the_test_suite_runs_before_the_image_job() -> None:
    """The image job needs the test job, which is ci.yml: .ci/run with Postgres and Redis."""
    jobs = load("release.yml")["jobs"]
    assert set(jobs) == {"test", "image"}
    assert jobs["image"]["needs"] in ("test", ["test"])
    assert jobs["test"]["uses"] == "./.github/workflows/ci.yml"
    ci = load("ci.yml")
    assert {"push", "pull_request", "workflow_call"} <= set(ci["on"])
    test = ci["jobs"]["test"]
    assert {s["image"].split(":")[0] for s in test["services"].values()} == {"postgres", "redis"}
    assert test["env"]["CI"] == "true"
    assert any(step.get("run") == "bash .ci/run" for step in test["steps"])
    # .ci/run ends with the README's test command.
    ci_run = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci_run[-1] == "make test"


def test_image_is_built_for_both_platforms_and_scanned_before_tagging() -> None:
    """Both platforms are pushed by digest, each is scanned, and only then tagged."""
    job = load("release.yml")["jobs"]["image"]
    (qemu, _), (buildx, _) = (
        steps_using(job, "docker/setup-qemu-action")[0],
        steps_using(job, "docker/setup-buildx-action")[0],
    )
    [(build_at, build)] = steps_using(job, "docker/build-push-action")
    assert qemu < build_at and buildx < build_at
    assert set(build["with"]["platforms"].split(",")) == PLATFORMS
    # Pushed without a tag: nothing names the image before the scan passes.
    assert "tags" not in build["with"]
    assert "push-by-digest=true" in build["with"]["outputs"]
    scans = steps_using(job, "aquasecurity/trivy-action")
    assert {step["env"]["TRIVY_PLATFORM"] for _, step in scans} == PLATFORMS
    for at, scan in scans:
        assert build_at < at
        assert scan["with"]["severity"] == "CRITICAL"
        assert str(scan["with"]["exit-code"]) == "1"
        assert scan["with"]["image-ref"].endswith("@${{ steps.build.outputs.digest }}")
    tag_at = next(i for i, s in enumerate(job["steps"]) if "imagetools create" in s.get("run", ""))
    assert tag_at > max(at for at, _ in scans)
    [(_, meta)] = steps_using(job, "docker/metadata-action")
    assert "type=semver,pattern={{version}}" in meta["with"]["tags"]
    assert job["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"


def test_permissions_are_minimal_and_actions_pinned() -> None:
    """No job may write more than packages; every action is pinned, trivy's by commit."""
    release = load("release.yml")
    assert release["permissions"] == {}
    assert release["jobs"]["test"]["permissions"] == {"contents": "read"}
    assert release["jobs"]["image"]["permissions"] == {"contents": "read", "packages": "write"}
    assert load("ci.yml")["permissions"] == {"contents": "read"}
    for name in ("ci.yml", "release.yml"):
        for job in load(name)["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    assert PINNED.fullmatch(step["uses"]), step["uses"]
                    if step["uses"].startswith("aquasecurity/"):
                        assert re.search(r"@[0-9a-f]{40}$", step["uses"]), step["uses"]
