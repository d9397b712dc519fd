"""One shared contract, several transports: each test of ``test_contract.py`` runs over
the in-memory backend and real ZeroMQ sockets on TCP loopback and IPC."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from ackbus.transport import Backend, MemoryBackend, ZmqBackend


@dataclass
class Kit:
    name: str
    backend: Backend
    address: Callable[[], str]
    """A fresh address for a listener to bind (may contain a port 0 or ``*``)."""


@pytest.fixture(params=["memory", "tcp", "ipc"])
def kit(request: pytest.FixtureRequest) -> Iterator[Kit]:
    if request.param == "memory":
        yield Kit("memory", MemoryBackend(), lambda: "inmem://*")
    elif request.param == "tcp":
        yield Kit("tcp", ZmqBackend(), lambda: "tcp://127.0.0.1:0")
    else:
        # ipc paths are limited to ~100 bytes: keep the directory short
        tmp = tempfile.mkdtemp(prefix="ackbus-", dir="/tmp")
        count = iter(range(1000))
        yield Kit("ipc", ZmqBackend(), lambda: f"ipc://{tmp}/s{next(count)}")
        shutil.rmtree(tmp, ignore_errors=True)


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``cond`` until true; TimeoutError after ``timeout`` s. For states that no
    event announces (a descriptor count, a callback list)."""
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 (nothing to wait on but time)
            await asyncio.sleep(0.002)
