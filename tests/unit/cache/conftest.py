"""Fixtures for the cache unit tests."""

from __future__ import annotations

import pytest

from tests.unit.cache.clock import Clock


@pytest.fixture
def clock() -> Clock:
    """A clock the test moves by hand."""
    return Clock()
