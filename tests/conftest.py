"""Fixtures every test folder may use; folder-specific ones live in each folder's conftest.py.
Helpers that are not fixtures (FAST, running_hub, eventually, settle) are in
tests/support/helpers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from helpers import HubBus, running_hub
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


@pytest.fixture
async def hub() -> AsyncIterator[str]:
    """An embedded hub on a free TCP port; its address."""
    async with running_hub("tcp") as bus:
        yield bus.address


@pytest.fixture
async def memory_hub() -> AsyncIterator[HubBus]:
    """An embedded hub on the in-memory transport; its endpoints connect to
    ``memory_hub.address`` with ``backend=memory_hub.backend``."""
    async with running_hub("memory") as bus:
        yield bus
