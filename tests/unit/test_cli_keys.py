"""``llm-proxy keys create``: a chosen key from a file or stdin stays off the command line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from proxy.__main__ import main
from proxy.keys import hash_key

KEY = "sk-chosen-0123456789abcdef"


@pytest.fixture(autouse=True)
def sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keys go to a SQLite file of the test's own (no DATABASE_URL, no config file)."""
    for name in ("DATABASE_URL", "DATABASE_URL_FILE", "LLM_PROXY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "keys.db"
    monkeypatch.setenv("LLM_PROXY_SQLITE_PATH", str(path))
    return path


def _created(out: str) -> dict[str, str]:
    created: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    return created


def test_key_file_is_used_and_no_warning_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--key-file PATH stores that key (its trailing newline dropped), quietly."""
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    assert main(["keys", "create", "--key-file", str(path), "--alias", "from-file"]) == 0
    out, err = capsys.readouterr()
    created = _created(out)
    assert created["key"] == KEY
    assert created["token"] == hash_key(KEY)
    assert err == ""


def test_key_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--key - reads the key from standard input (as piped by a secret manager)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert main(["keys", "create", "--key", "-"]) == 0
    out, err = capsys.readouterr()
    assert _created(out)["token"] == hash_key(KEY)
    assert err == ""


def test_literal_key_works_but_warns(capsys: pytest.CaptureFixture[str]) -> None:
    """--key VALUE still works, with a warning that the command line shows it."""
    assert main(["keys", "create", "--key", KEY]) == 0
    out, err = capsys.readouterr()
    assert _created(out)["token"] == hash_key(KEY)
    assert "warning: --key puts the key on the command line" in err
    assert KEY not in err


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--key-file", "/nonexistent/key"], "", "--key-file: cannot read secret file"),
        (["--key", "-"], "\n", "--key -: no key on stdin"),
        (["--key", "-"], "short\n", "at least 8 characters"),
    ],
)
def test_unusable_key_is_a_one_line_error(
    args: list[str],
    stdin: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A missing file, empty stdin or a too-short key exits 2 with one line, no traceback."""
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["keys", "create", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("llm-proxy: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_key_and_key_file_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Giving both is a usage error: which one counts would be a guess."""
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--key", KEY, "--key-file", str(tmp_path / "k")])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
