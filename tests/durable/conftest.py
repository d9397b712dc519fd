"""Fixtures for the durable-store tests; the process harness lives in tests/support."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from proc_harness import Procs


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        for proc in p.running:
            p.kill(proc)
