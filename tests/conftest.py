"""Fixtures every test folder may use; folder-specific ones live in each folder's conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from proc_harness import Procs


@pytest.fixture
def procs() -> Iterator[Procs]:
    """Starts real processes (tests/support/proc_harness.py); every one still running at
    teardown is killed and reaped."""
    p = Procs()
    try:
        yield p
    finally:
        for proc in p.running:
            p.kill(proc)
