"""Fixtures for the legacy tests: a hub, plain pyzmq sockets, real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import zmq
import zmq.asyncio
from ackbus.hub import Hub


@pytest.fixture
async def hub() -> AsyncIterator[str]:
    """An in-process hub on a random TCP port; its address."""
    async with Hub("tcp://127.0.0.1:0", heartbeat=0.2) as h:
        yield h.addresses[0]


@pytest.fixture
def plain_zmq() -> Iterator[Callable[[int], zmq.asyncio.Socket]]:
    """Makes plain pyzmq sockets (``plain_zmq(zmq.PUSH)``), as a legacy service owns
    them; every one is closed, and the context terminated, at teardown."""
    ctx = zmq.asyncio.Context()
    made: list[zmq.asyncio.Socket] = []

    def make(kind: int) -> zmq.asyncio.Socket:
        sock = ctx.socket(kind)
        sock.linger = 0
        made.append(sock)
        return sock

    try:
        yield make
    finally:
        for sock in made:
            sock.close(0)
        ctx.term()
