"""Shared fixtures: a clean environment for settings and a config-file factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, settings

# The real Postgres and Redis, for every test folder (fail under CI=true when missing).
from tests.integration.conftest import (  # noqa: F401 - fixtures
    pg_schema,
    postgres_url,
    redis_key_prefix,
    redis_url,
)

# Timing is not what property tests check: on a loaded 2-core machine generation can be
# slow, and a timed health check or deadline would fail a correct test.
settings.register_profile("llm-proxy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("llm-proxy")

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
