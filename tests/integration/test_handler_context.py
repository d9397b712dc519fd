"""Handlers started eagerly by a real endpoint still run as if in a task of their own.

A hub and two endpoints over TCP loopback (and the in-memory transport, which delivers
from inside a task): a handler that opens with ``asyncio.timeout`` works, whether the
timeout expires or not, and a ContextVar one handler sets is not seen by the next.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator

import helpers
import pytest
from ackbus import Context
from ackbus.endpoint import Endpoint
from ackbus.transport import Backend
from ackbus.wire_pb2 import Bye

FAST = helpers.FAST.with_(ack_timeout=0.5)

Bus = tuple[Backend, str]


@pytest.fixture(params=["tcp", "memory"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    async with helpers.running_hub(request.param) as running:
        yield running.backend, running.address


def endpoint(bus: Bus, service: str) -> Endpoint:
    backend, address = bus
    return Endpoint(service, address, backend=backend, policy=FAST, heartbeat=helpers.HEARTBEAT)


async def test_a_handler_that_opens_with_asyncio_timeout_is_acked(bus: Bus) -> None:
    outcomes: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        try:
            async with asyncio.timeout(float(msg.reason)):
                await asyncio.sleep(0.05)
            outcomes.append("in time")
        except TimeoutError:
            outcomes.append("timed out")

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.05)  # the hello reaches the hub
        in_time = await dealer.send(Bye(reason="2"), timeout=3)
        timed_out = await dealer.send(Bye(reason="0.01"), timeout=3)
    assert in_time, in_time.error
    assert timed_out, timed_out.error
    assert outcomes == ["in time", "timed out"]


async def test_a_context_var_set_by_one_handler_is_not_seen_by_the_next(bus: Bus) -> None:
    last: contextvars.ContextVar[str] = contextvars.ContextVar("last", default="none")
    seen: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        seen.append(last.get())
        last.set(msg.reason)

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.05)
        for reason in ("first", "second"):
            report = await dealer.send(Bye(reason=reason), timeout=3)
            assert report, report.error
    assert seen == ["none", "none"]
