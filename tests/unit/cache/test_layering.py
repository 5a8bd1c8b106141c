"""The cache edge stays an edge: it imports no web framework and no other edge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONTRACT = """
[tool.importlinter]
root_package = "proxy"
include_external_packages = true

[[tool.importlinter.contracts]]
name = "the cache edge knows no other edge"
type = "forbidden"
source_modules = ["proxy.cache"]
forbidden_modules = [
    "sanic", "aiohttp", "httpx", "asyncpg", "aiosqlite",
    "proxy.api", "proxy.app", "proxy.pipeline", "proxy.upstream",
    "proxy.store", "proxy.limits", "proxy.usage", "proxy.keys",
]
"""


def test_cache_imports_no_other_edge(tmp_path: Path) -> None:
    """import-linter finds no path from proxy.cache to Sanic, the pipeline or another edge."""
    config = tmp_path / "cache-contract.toml"
    config.write_text(CONTRACT)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
