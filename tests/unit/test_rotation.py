"""Secret rotation: the watcher notices changed files, Rotation applies the new values."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.app import build_context
from proxy.context import AppContext
from proxy.rotation import (
    Rotation,
    SecretWatcher,
    master_keys_from,
)
from proxy.secrets import MasterKeys, SecretFile
from proxy.settings import Settings, load_settings

SENTINEL = "sk-sentinel-rot-51d2"


class _Recorder:
    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []

    def __call__(self, file: SecretFile, value: str) -> None:
        self.applied.append((file.name, value))


def _watched(path: Path, value: str) -> SecretFile:
    return SecretFile("K_FILE", str(path), "api_key").with_value(value)


def test_check_applies_a_changed_file_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A changed file is applied and logged by name, never by value; unchanged is skipped."""
    path = tmp_path / "k"
    path.write_text("v1\n")
    recorder = _Recorder()
    watcher = SecretWatcher([_watched(path, "v1")], recorder)
    assert watcher.check() == []
    path.write_text(SENTINEL + "\n")
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse-grained filesystem
    with caplog.at_level(logging.INFO, logger="llm_proxy"):
        assert watcher.check() == ["K_FILE"]
        assert watcher.check() == []
    assert recorder.applied == [("K_FILE", SENTINEL)]
    assert "secret K_FILE rotated" in caplog.text
    assert SENTINEL not in caplog.text


def test_a_change_before_the_worker_started_is_applied(tmp_path: Path) -> None:
    """The first check compares with the value the settings were loaded with."""
    path = tmp_path / "k"
    path.write_text("changed")
    recorder = _Recorder()
    watcher = SecretWatcher([_watched(path, "loaded")], recorder)
    assert watcher.check() == ["K_FILE"]
    assert recorder.applied == [("K_FILE", "changed")]


def test_symlink_swap_is_noticed(tmp_path: Path) -> None:
    """A Kubernetes-style swap of the symlinked directory counts as a change."""
    for version, value in (("v1", "first"), ("v2", "second")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "key").write_text(value)
        os.utime(tmp_path / version / "key", ns=(5, 5))  # same mtime: only the target differs
    (tmp_path / "..data").symlink_to("v1")
    link = tmp_path / "key"
    link.symlink_to("..data/key")
    recorder = _Recorder()
    watcher = SecretWatcher([_watched(link, "first")], recorder)
    assert watcher.check() == []
    tmp = tmp_path / "..data_tmp"
    tmp.symlink_to("v2")
    tmp.replace(tmp_path / "..data")
    assert watcher.check() == ["K_FILE"]
    assert recorder.applied == [("K_FILE", "second")]


def test_failed_reread_keeps_the_value_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing or empty file keeps the old value, with one warning per problem."""
    path = tmp_path / "k"
    path.write_text("v1")
    recorder = _Recorder()
    watcher = SecretWatcher([_watched(path, "v1")], recorder)
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="llm_proxy"):
        assert watcher.check() == []
        assert watcher.check() == []
    assert caplog.text.count("cannot read secret file") == 1
    assert "keeping the current value" in caplog.text
    path.write_text("\n")
    assert watcher.check() == []
    assert recorder.applied == []
    path.write_text("v2")
    assert watcher.check() == ["K_FILE"]


def test_reload_rereads_even_without_a_visible_change(tmp_path: Path) -> None:
    """SIGHUP's reload re-reads every file whatever its stat says."""
    path = tmp_path / "k"
    path.write_text("v1")
    recorder = _Recorder()
    watcher = SecretWatcher([_watched(path, "v1")], recorder)
    watcher.check()
    stat = path.stat()
    path.write_text("v2")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert watcher.reload() == ["K_FILE"]
    assert recorder.applied == [("K_FILE", "v2")]


def test_a_failing_apply_is_retried_later(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """When applying fails, the old value stays and the next reload tries again."""
    path = tmp_path / "k"
    path.write_text("v2")
    calls: list[str] = []

    def flaky(file: SecretFile, value: str) -> None:
        calls.append(value)
        if len(calls) == 1:
            raise RuntimeError("boom")

    watcher = SecretWatcher([_watched(path, "v1")], flaky)
    assert watcher.check() == []
    assert "applying the new value failed" in caplog.text
    assert watcher.reload() == ["K_FILE"]
    assert calls == ["v2", "v2"]


# --------------------------------------------------------------------------- Rotation


@pytest.fixture
async def context(tmp_path: Path) -> AsyncIterator[tuple[Settings, AppContext, MasterKeys]]:
    """A worker's context with a file-backed provider key and master key, on SQLite."""
    key = tmp_path / "key"
    key.write_text("sk-old-upstream")
    config = tmp_path / "c.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: gpt\n"
        f"    params: {{model: openai/gpt-4o, api_base: 'http://127.0.0.1:9/v1', "
        f"api_key: 'file:{key}'}}\n"
        "  - model_name: claude\n"
        f"    params: {{model: anthropic/claude, api_base: 'http://127.0.0.1:9', "
        f"api_key: 'file:{key}'}}\n"
        "  - model_name: plain\n"
        "    params: {model: openai/x, api_base: 'http://127.0.0.1:9/v1', api_key: sk-plain}\n"
        "master_key: sk-master-old\n"
        "master_key_grace_seconds: 60\n"
        "usage: {enabled: false}\n"
        f"database: {{sqlite_path: '{tmp_path / 'db.sqlite'}'}}\n"
    )
    settings = load_settings(str(config), {}, lambda _: None)
    keys = master_keys_from(settings)
    ctx = await build_context(settings, keys)
    try:
        yield settings, ctx, keys
    finally:
        await ctx.aclose()


def _headers(ctx: AppContext, alias: str) -> dict[str, str]:
    (deployment,) = [d for d in ctx.router.deployments if d.alias == alias]
    return dict(deployment.headers)


async def test_provider_key_rotation_rebuilds_headers(
    context: tuple[Settings, AppContext, MasterKeys],
) -> None:
    """A new api_key reaches the entry's deployment headers, and only that entry's."""
    settings, ctx, keys = context
    rotate = Rotation(settings, ctx, keys)
    for file in settings.secret_files:
        rotate(file, "sk-new-upstream")
    assert _headers(ctx, "gpt")["authorization"] == "Bearer sk-new-upstream"
    assert _headers(ctx, "claude")["x-api-key"] == "sk-new-upstream"
    assert _headers(ctx, "plain")["authorization"] == "Bearer sk-plain"


async def test_master_key_rotation_keeps_the_old_key_for_the_grace(
    context: tuple[Settings, AppContext, MasterKeys],
) -> None:
    """The pipeline's master keys follow the rotation; the old one stays for the grace."""
    settings, ctx, keys = context
    rotate = Rotation(settings, ctx, keys)
    rotate(SecretFile("MK_FILE", "/x", "master_key"), "sk-master-new")
    auth = {"authorization": "Bearer sk-master-new"}
    assert ctx.pipeline.authenticate_admin(auth).startswith("master-key:")
    assert await ctx.pipeline.caller({"authorization": "Bearer sk-master-old"}) is None
    assert keys.matches("sk-master-old")


async def test_database_url_on_sqlite_only_warns(
    context: tuple[Settings, AppContext, MasterKeys], caplog: pytest.LogCaptureFixture
) -> None:
    """A rotated DATABASE_URL cannot change a SQLite store; it says so without the value."""
    settings, ctx, keys = context
    rotate = Rotation(settings, ctx, keys)
    rotate(SecretFile("DATABASE_URL_FILE", "/x", "database_url"), "postgresql://u:pw@h/db")
    assert "DATABASE_URL_FILE" in caplog.text
    assert "pw@" not in caplog.text


async def test_redis_url_goes_to_clients_that_take_it(
    context: tuple[Settings, AppContext, MasterKeys], caplog: pytest.LogCaptureFixture
) -> None:
    """Redis holders with set_redis_url get the new URL; the others are reported by warning."""
    settings, ctx, keys = context
    taken: list[str] = []

    class _Taker:
        def set_redis_url(self, url: str) -> None:
            taken.append(url)

        async def aclose(self) -> None:
            return None

    limiter, ctx.limiter = ctx.limiter, _Taker()  # type: ignore[assignment]
    try:
        Rotation(settings, ctx, keys)(SecretFile("REDIS_URL_FILE", "/x", "redis_url"), "redis://n")
    finally:
        ctx.limiter = limiter
    assert taken == ["redis://n"]
    assert "some Redis clients keep their connection settings" in caplog.text
