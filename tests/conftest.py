"""Fixtures every test folder may use; folder-specific ones live in each folder's conftest.py.
Helpers that are not fixtures (FAST, running_hub, eventually, settle) are in
tests/support/helpers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from helpers import HubBus, running_hub
from proc_harness import Procs

if TYPE_CHECKING:
    from pg_server import PgServer


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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for this test session (tests/support/pg_server.py),
    stopped and removed at its end. Fails, naming what to install, where there is none."""
    from pg_server import PgServer

    try:
        server = PgServer()
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a fresh, empty database on :func:`pg_server` (over its unix socket)."""
    return pg_server.url(pg_server.new_database())
