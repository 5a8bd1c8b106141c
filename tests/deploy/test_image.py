"""The Dockerfile lints clean and keeps the properties deploy/README.md relies on."""

from __future__ import annotations

import json
import subprocess

from tests.deploy.conftest import ROOT, find_tool

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    pairs = [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]
    return [(word.upper(), rest) for word, rest in pairs]


def test_hadolint_finds_nothing_at_warning_level() -> None:
    """hadolint --failure-threshold warning passes on the Dockerfile."""
    result = subprocess.run(
        [find_tool("hadolint"), "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_stages_build_on_one_overridable_base() -> None:
    """BASE_IMAGE defaults to the official slim image and feeds the builder and the runtime."""
    steps = _instructions()
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    assert [rest for word, rest in steps if word == "FROM"] == [
        "${BASE_IMAGE} AS builder",
        "${BASE_IMAGE} AS runtime",
    ]


def test_the_runtime_runs_as_uid_10001_with_exec_form_entrypoint() -> None:
    """Non-root user 10001, exec-form ENTRYPOINT and CMD, a python HEALTHCHECK on /health."""
    runtime = _instructions()
    runtime = runtime[runtime.index(("FROM", "${BASE_IMAGE} AS runtime")) :]
    last = {word: rest for word, rest in runtime}
    assert last["USER"] == "10001:10001"
    assert json.loads(last["ENTRYPOINT"]) == ["llm-proxy"]
    assert json.loads(last["CMD"]) == ["serve", "--config", "/etc/llm-proxy/config.yaml"]
    assert "python3" in last["HEALTHCHECK"] and "/health" in last["HEALTHCHECK"]
    assert "PYTHONDONTWRITEBYTECODE=1" in last["ENV"]
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert not any(word == "RUN" and "apt-get" in rest for word, rest in runtime)


def test_the_build_script_parses() -> None:
    """scripts/image.sh is valid bash (make image runs it for real; see deploy/README.md)."""
    result = subprocess.run(
        [find_tool("bash"), "-n", str(ROOT / "scripts" / "image.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
