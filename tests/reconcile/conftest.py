"""Fixtures for the reconcile tests (helpers live in reconcile_world.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reconcile_world import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()
