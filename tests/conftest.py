"""Shared fixtures: a clean environment for settings and a config-file factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

WriteConfig = Callable[[dict[str, Any]], Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a config mapping as YAML and return its path."""
    counter = iter(range(1000))

    def write(data: dict[str, Any]) -> Path:
        path = tmp_path / f"config-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write
