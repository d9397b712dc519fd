"""Fixtures for the legacy tests: plain pyzmq sockets (the hub is tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import zmq
import zmq.asyncio


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
