"""Endpoint and hub end to end: the delivery contract.

Every scenario runs over the in-memory transport, over real ZeroMQ sockets on TCP
loopback and on ipc://, and through an embedded hub that some endpoints reach in
memory and others over TCP.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from ackbus import (
    Cancelled,
    ClosedError,
    ConnectTimeout,
    Context,
    DeliveryStatus,
    Kind,
    NoRoute,
    Reject,
    Rejected,
    SendWindowTimeout,
)
from ackbus.endpoint import Endpoint
from ackbus.hub import Hub
from ackbus.transport import Backend, DefaultBackend, MemoryBackend
from ackbus.wire_pb2 import Bye, Refusal, Welcome
from helpers import FAST, HEARTBEAT, TRANSPORTS, running_hub
from proc_harness import free_port

Bus = tuple[Backend, Callable[[], str]]
"""The backend, and the address the next endpoint connects to."""


@pytest.fixture(params=TRANSPORTS)
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bus]:
    """Every scenario over each transport; *mixed* is a hub embedded in the test's
    process, listening on TCP and ``inmem://``, with the endpoints taking turns: the
    first (a receiver, in most scenarios) connects in memory, the next over TCP..."""
    async with running_hub(request.param, tmp_path) as running:
        yield running.backend, itertools.cycle(running.hub.addresses).__next__


def endpoint(bus: Bus, service: str, **kw: object) -> Endpoint:
    backend, address = bus
    return Endpoint(service, address(), backend=backend, policy=FAST, heartbeat=HEARTBEAT, **kw)  # type: ignore[arg-type]


async def test_ack_comes_after_the_handler_ran(bus: Bus) -> None:
    seen: list[tuple[str, str]] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        await asyncio.sleep(0.01)  # a handler that suspends: the ack still waits for it
        seen.append((msg.reason, ctx.sender.service))

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.05)  # the new hello reaches the hub
        report = await dealer.send(Bye(reason="hi"), timeout=2)
    assert report, report.error
    assert report.status is DeliveryStatus.ACKED
    assert seen == [("hi", "dealer")]
    assert [i.service for i in report.acked_by] == ["table"]
    assert report.attempts == 1
    assert report.latency is not None
    assert report.latency >= 0.0


async def test_request_returns_the_typed_response(bus: Bus) -> None:
    async def on_bye(msg: Bye, ctx: Context) -> Welcome:
        return Welcome(heartbeat_ms=len(msg.reason))

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye, response=Welcome)
        await asyncio.sleep(0.05)
        answer = await dealer.request(Bye(reason="four"), Welcome, timeout=2)
    assert answer == Welcome(heartbeat_ms=4)


async def test_no_route_fails_within_the_timeout(bus: Bus) -> None:
    async with endpoint(bus, "dealer") as dealer:
        loop = asyncio.get_running_loop()
        start = loop.time()
        report = await dealer.send(Bye(reason="nobody"), timeout=0.5)
        took = loop.time() - start
    assert not report
    assert isinstance(report.error, NoRoute)
    assert "ackbus.Bye" in str(report.error)
    assert took < 1.0


async def test_handler_error_is_reported_with_its_type(bus: Bus) -> None:
    async def on_bye(msg: Bye, ctx: Context) -> None:
        raise Reject("table is closed")

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.05)
        report = await dealer.send(Bye(), timeout=2)
    assert isinstance(report.error, Rejected)
    assert report.error.remote_type == "Reject"
    assert report.error.permanent
    assert "table is closed" in str(report.error)
    assert report.attempts == 1


async def test_slow_handler_is_retried_but_runs_once(bus: Bus) -> None:
    runs: list[bytes] = []

    async def slow(msg: Bye, ctx: Context) -> None:
        runs.append(ctx.message_id)
        await asyncio.sleep(0.5)  # longer than many ack timeouts: the sender retries

    # An ack timeout shorter than the receiver's IN_PROGRESS interval (a quarter of its
    # 0.2 s heartbeat): the sender retries, and each retry reaches the running handler,
    # which answers IN_PROGRESS at once instead of running again; with the lease those
    # retries are not spent. Without it, 3 attempts end within about 0.2 s, long before
    # the 0.5 s handler returns (3, not 2: on a loaded machine the first IN_PROGRESS
    # can take longer than two 20 ms timeouts to come back).
    eager = FAST.with_(ack_timeout=0.02, max_attempts=3)
    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, slow)
        await asyncio.sleep(2.5 * HEARTBEAT)  # past the hub's grace (retries wait then)
        report = await dealer.send(Bye(), timeout=3, policy=eager)
        assert report, report.error
        assert report.attempts >= 2
        assert len(runs) == 1
        assert table.stats.duplicates >= 1


async def test_event_fans_out_to_every_subscribed_service(
    bus: Bus,
) -> None:
    got: list[str] = []

    def subscriber(name: str):  # type: ignore[no-untyped-def]
        async def on_refusal(msg: Refusal, ctx: Context) -> None:
            got.append(name)

        return on_refusal

    async with (
        endpoint(bus, "audit") as audit,
        endpoint(bus, "lobby") as lobby,
        endpoint(bus, "table") as table,
    ):
        audit.register_handler(Refusal, subscriber("audit"), kind=Kind.EVENT)
        lobby.register_handler(Refusal, subscriber("lobby"), kind=Kind.EVENT)
        await asyncio.sleep(0.05)
        report = await table.publish(Refusal(reason="hand started"), timeout=2)
    assert report, report.error
    assert sorted(got) == ["audit", "lobby"]
    assert sorted(i.service for i in report.acked_by) == ["audit", "lobby"]


async def test_event_nobody_subscribes_to_is_delivered_to_nobody(
    bus: Bus,
) -> None:
    async with endpoint(bus, "table") as table:
        report = await table.publish(Refusal(), timeout=2)
    assert report
    assert report.acked_by == ()


async def test_close_fails_pending_sends_with_cancelled(bus: Bus) -> None:
    async def never(msg: Bye, ctx: Context) -> None:
        await asyncio.sleep(3600)

    async with endpoint(bus, "table") as table:
        table.register_handler(Bye, never)
        dealer = await endpoint(bus, "dealer").start()
        await asyncio.sleep(0.05)
        reports = [await dealer.send(Bye(), wait_ack=False) for _ in range(5)]
        await asyncio.sleep(0.05)
        await dealer.close()
        assert all(r.done and isinstance(r.error, Cancelled) for r in reports)
        assert dealer.pending == 0
        with pytest.raises(ClosedError):
            await dealer.send(Bye())


async def test_pipelined_sends_are_all_acked(bus: Bus) -> None:
    count = 0

    async def on_bye(msg: Bye, ctx: Context) -> None:
        nonlocal count
        count += 1

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.05)
        reports = [await dealer.send(Bye(), wait_ack=False) for _ in range(2000)]
        async with asyncio.timeout(5):
            for r in reports:
                await r.wait(5)
    assert all(reports)
    assert count == 2000
    assert dealer.pending == 0


async def test_connect_timeout_when_no_hub_answers(tmp_path: Path) -> None:
    ep = Endpoint("lonely", f"ipc://{tmp_path}/nobody.sock", connect_timeout=0.2)
    with pytest.raises(ConnectTimeout, match="no hub"):
        await ep.start()
    assert ep.closed


async def test_send_window_timeout_when_nothing_is_acked(bus: Bus) -> None:
    async def never(msg: Bye, ctx: Context) -> None:
        await asyncio.sleep(3600)

    table = endpoint(bus, "table")
    table.register_handler(Bye, never)
    async with table, endpoint(bus, "dealer", window=3) as dealer:
        reports = [await dealer.send(Bye(), wait_ack=False) for _ in range(3)]
        with pytest.raises(SendWindowTimeout, match="stayed unacknowledged"):
            await dealer.send(Bye(), timeout=0.2)
        assert not any(r.done for r in reports)


async def test_window_frees_up_as_acks_arrive(bus: Bus) -> None:
    async def quick(msg: Bye, ctx: Context) -> None:
        await asyncio.sleep(0.001)

    table = endpoint(bus, "table")
    table.register_handler(Bye, quick)
    async with table, endpoint(bus, "dealer", window=4) as dealer:
        reports = [await dealer.send(Bye(), wait_ack=False, timeout=5) for _ in range(50)]
        for r in reports:
            await r.wait(5)
    assert all(reports)


@pytest.mark.parametrize("size", [100, 70_000, 2_000_000])
async def test_payloads_small_and_big_arrive_whole(bus: Bus, size: int) -> None:
    """Big bodies are parsed from a view into the received frame, small ones from a
    copy: both arrive byte for byte."""
    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)

    table = endpoint(bus, "table")
    table.register_handler(Bye, on_bye)
    reason = "".join(chr(0x61 + i % 26) for i in range(size))
    async with table, endpoint(bus, "dealer") as dealer:
        report = await dealer.send(Bye(reason=reason), timeout=10)
    assert report
    assert got == [reason]


async def test_an_embedded_hub_restarted_in_process_loses_nothing() -> None:
    """Endpoints on both sides of an embedded hub (one in memory, one over TCP) wait
    for it through a restart on the same addresses; what was sent meanwhile arrives,
    once."""
    backend = DefaultBackend(local=MemoryBackend())
    addresses = ["inmem://hub", f"tcp://127.0.0.1:{free_port()}"]
    runs: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        runs.append(msg.reason)

    hub = await Hub(addresses, backend=backend, heartbeat=HEARTBEAT).start()
    table = Endpoint("table", addresses[0], backend=backend, policy=FAST, heartbeat=HEARTBEAT)
    table.register_handler(Bye, on_bye)
    dealer = Endpoint("dealer", addresses[1], backend=backend, heartbeat=HEARTBEAT)
    async with table, dealer:
        assert await dealer.send(Bye(reason="before"), timeout=3)
        await hub.close()
        during = await dealer.send(Bye(reason="during"), wait_ack=False, timeout=10)
        await asyncio.sleep(0.3)
        assert not during.done
        hub = await Hub(addresses, backend=backend, heartbeat=HEARTBEAT).start()
        try:
            await during.wait(10)
            assert during, during.error
            assert await dealer.send(Bye(reason="after"), timeout=3)
        finally:
            await hub.close()
    assert runs == ["before", "during", "after"]
