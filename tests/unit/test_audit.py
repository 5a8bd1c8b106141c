"""Audit entries: what is recorded about an admin action, and the log line it becomes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from proxy import audit
from proxy.audit import Actor
from proxy.logs import JsonFormatter

RAW = "sk-raw-secret-0000000000000000"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The audit logger's lines, formatted as the proxy's JSON logs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    audit.log.addHandler(handler)
    yield stream
    audit.log.removeHandler(handler)


def test_changes_keep_names_and_plain_values_but_no_secrets() -> None:
    """The raw key is dropped, metadata keeps only its names, times become ISO text."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    changes = audit.safe_changes(
        {
            "key": RAW,
            "models": ("a", "b"),
            "metadata": {"owner": RAW, "team": "x"},
            "expires": when,
            "rpm_limit": 5,
            "blocked": True,
        }
    )
    assert changes == {
        "models": ["a", "b"],
        "metadata": ["owner", "team"],
        "expires": "2026-01-02T03:04:05+00:00",
        "rpm_limit": 5,
        "blocked": True,
    }
    assert RAW not in json.dumps(changes)


def test_entry_carries_who_and_where() -> None:
    """The actor's name, address, forwarded-for (cut to a sane length) and request id."""
    by = Actor(name="master-key:abc", client_ip="", forwarded_for="1.2.3.4" * 500, request_id="r-1")
    done = audit.entry(by, "key.updated", target_hash="h" * 64, target_alias=None)
    assert done.actor == "master-key:abc" and done.action == "key.updated"
    assert done.client_ip is None  # Sanic's empty remote_addr means unknown
    assert done.forwarded_for is not None and len(done.forwarded_for) == 1000
    assert done.request_id == "r-1" and done.changes == {}
    assert done.at.tzinfo is UTC


def test_emit_writes_one_json_line(captured: io.StringIO) -> None:
    """An emitted entry is one JSON object on llm_proxy.audit with its fields at the top."""
    by = Actor(name="cli:alice", client_ip="127.0.0.1")
    done = audit.entry(
        by, "key.generated", target_hash="f" * 64, target_alias="team-a", changes={"key": RAW}
    )
    audit.emit(done)
    (line,) = captured.getvalue().splitlines()
    fields = json.loads(line)
    assert fields["logger"] == "llm_proxy.audit" and fields["level"] == "info"
    assert fields["event"] == "audit" and fields["action"] == "key.generated"
    assert fields["actor"] == "cli:alice" and fields["target_alias"] == "team-a"
    assert fields["changes"] == {} and RAW not in line
    assert "id" not in fields


def test_cli_actor_names_the_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI acts as cli:<login name>."""
    monkeypatch.setenv("LOGNAME", "ops-bot")
    assert audit.cli_actor().name == "cli:ops-bot"
