"""Rotation of REDIS_URL_FILE: all Redis clients switch together, or none does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.app import build_context
from proxy.context import AppContext
from proxy.rotation import Rotation, SecretWatcher, master_keys_from
from proxy.settings import Settings, load_settings


class _Taker:
    """A Redis client holder that records the URLs it is given."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def set_redis_url(self, url: str) -> None:
        self.urls.append(url)

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def rotated(tmp_path: Path) -> AsyncIterator[tuple[Settings, AppContext, Path]]:
    """A worker context whose REDIS_URL comes from a file; its Redis holders are recorders."""
    url_file = tmp_path / "redis-url"
    url_file.write_text("redis://old:pw-old@127.0.0.1:9/0\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "model_list: [{model_name: m, params: {model: mock/m}}]\n"
        "usage: {enabled: false}\n"
        f"database: {{sqlite_path: '{tmp_path / 'db.sqlite'}'}}\n"
    )
    settings = load_settings(str(config), {"REDIS_URL_FILE": str(url_file)}, lambda _: None)
    ctx = await build_context(settings, master_keys_from(settings))
    real = ctx.limiter, ctx.events
    ctx.limiter, ctx.events = _Taker(), _Taker()  # type: ignore[assignment]
    try:
        yield settings, ctx, url_file
    finally:
        ctx.limiter, ctx.events = real
        await ctx.aclose()


def _urls(ctx: AppContext) -> tuple[list[str], list[str]]:
    assert isinstance(ctx.limiter, _Taker) and isinstance(ctx.events, _Taker)
    return ctx.limiter.urls, ctx.events.urls


async def test_a_new_url_reaches_every_holder(
    rotated: tuple[Settings, AppContext, Path],
) -> None:
    """The limiter and key events both get the re-read URL, once."""
    settings, ctx, url_file = rotated
    watcher = SecretWatcher(
        settings.secret_files, Rotation(settings, ctx, master_keys_from(settings))
    )
    url_file.write_text("redis://new:pw-new@127.0.0.1:9/0\n")
    assert "REDIS_URL_FILE" in watcher.reload()
    assert _urls(ctx) == (["redis://new:pw-new@127.0.0.1:9/0"],) * 2


async def test_an_unusable_url_reaches_no_holder(
    rotated: tuple[Settings, AppContext, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A URL that is not Redis is refused before any client switches; the secret stays old."""
    settings, ctx, url_file = rotated
    watcher = SecretWatcher(
        settings.secret_files, Rotation(settings, ctx, master_keys_from(settings))
    )
    url_file.write_text("http://new:pw-new@127.0.0.1:9/0\n")
    assert watcher.reload() == []
    assert _urls(ctx) == ([], [])
    assert "applying the new value failed; keeping the old" in caplog.text
    assert "pw-new" not in caplog.text
    url_file.write_text("redis://new:pw-new@127.0.0.1:9/0\n")
    assert watcher.reload() == ["REDIS_URL_FILE"]
    assert _urls(ctx)[0] == ["redis://new:pw-new@127.0.0.1:9/0"]
