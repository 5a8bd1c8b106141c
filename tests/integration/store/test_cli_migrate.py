"""``llm-proxy migrate`` reports a database it cannot reach in one line, exit status 1."""

from __future__ import annotations

import socket

import pytest

from proxy.cli import migrate
from proxy.settings import load_settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_database_is_a_clean_failure(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/test"
    settings = load_settings(None, env={"DATABASE_URL": url}, warn=lambda _: None)
    assert await migrate(settings) == 1
    err = capsys.readouterr().err
    assert err.startswith("llm-proxy: migration failed:")
    assert "Traceback" not in err
