"""ackbus.testing: the in-memory bus with faults, run_twice and assert_idempotent, the
virtual clock, and the pytest plugin's fixtures (the repo's tests use them as a user's
would; tests/test_docs_testing.py runs docs/testing.md's worked example)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from ackbus import Context, Endpoint
from ackbus.testing import (
    Faults,
    TestBus,
    VirtualClockLoop,
    assert_idempotent,
    run_twice,
    run_virtual,
)
from helpers import FAST
from poker import table_ackbus, table_pb2

# A lossy bus: many quicker attempts, and a longer deadline, than the shared FAST.
LOSSY = FAST.with_(
    ack_timeout=0.05, backoff_base=0.005, backoff_cap=0.02, max_attempts=50, deadline=10
)


class Table(table_ackbus.TableHandler):
    def __init__(self) -> None:
        self.runs: list[str] = []
        self.dealt: set[str] = set()

    async def on_start_hand(self, msg: table_pb2.StartHand, ctx: Context) -> None:
        self.runs.append(msg.table_id)
        self.dealt.add(msg.table_id)  # idempotent: a set


async def test_lossy_duplicating_reordering_bus_delivers_everything_once() -> None:
    table = Table()
    async with TestBus(seed=3) as bus:
        t_ep = bus.endpoint("table")
        t_ep.register(table)
        dealer = bus.endpoint("dealer", policy=LOSSY)
        await bus.start()
        bus.faults.drop = 0.3
        bus.faults.duplicate = 0.3
        bus.faults.delay = 0.2
        # The generated client would apply the schema's policy (8 attempts); a lossy
        # test wants many quick attempts, so it sends with an explicit policy.
        reports = []
        for i in range(60):
            msg = table_pb2.StartHand(table_id=f"t{i}")
            reports.append(await dealer.send(msg, wait_ack=False, policy=LOSSY))
            # Each send its own multipart: faults hit multiparts, and 60 sends in one
            # batch gave too few draws for every kind of fault to show (1 run in 8).
            await asyncio.sleep(0.002)
        for r in reports:
            await r.wait(10)
    assert all(reports), [r.error for r in reports if not r][:3]
    assert sorted(table.runs) == sorted(f"t{i}" for i in range(60)), "a handler ran twice"
    assert bus.faults.dropped
    assert bus.faults.duplicated
    assert bus.faults.delayed
    assert any(r.attempts > 1 for r in reports)


async def test_run_twice_shows_whether_a_handler_is_idempotent() -> None:
    table = Table()
    await run_twice(table.on_start_hand, table_pb2.StartHand(table_id="x"))
    assert table.runs == ["x", "x"]  # it ran twice...
    assert table.dealt == {"x"}  # ...and its effect happened once


# ---------------------------------------------------------------------- the pytest plugin


@pytest.mark.ackbus(seed=5, heartbeat=0.1)
def test_the_marker_sets_the_buses_seed(ackbus_bus: TestBus, ackbus_seed: int) -> None:
    assert ackbus_seed == 5
    assert ackbus_bus.seed == 5


async def test_faults_on_the_way_back_lose_nothing_and_run_nothing_twice(
    ackbus_bus: TestBus,
    ackbus_endpoint: Callable[..., Awaitable[Endpoint]],
    ackbus_client: Callable[..., Awaitable[Any]],
    ackbus_faults: Faults,
) -> None:
    table = Table()
    await ackbus_endpoint("table", table)
    dealer = await ackbus_client(table_ackbus.TableClient, service="dealer")
    ackbus_faults.to_hub = False  # only what the hub sends: deliveries and acks
    ackbus_faults.from_hub = True
    ackbus_faults.drop = ackbus_faults.duplicate = ackbus_faults.reorder = 0.25
    reports = []
    for i in range(40):
        reports.append(await dealer.send_start_hand(table_id=f"t{i}", policy=LOSSY))
    ackbus_bus.assert_exactly_once(reports)
    assert sorted(table.runs) == sorted(f"t{i}" for i in range(40))
    assert ackbus_faults.dropped
    assert ackbus_faults.duplicated
    assert ackbus_faults.reordered


async def test_a_hub_restart_mid_stream_loses_nothing(
    ackbus_bus: TestBus,
    ackbus_endpoint: Callable[..., Awaitable[Endpoint]],
    ackbus_client: Callable[..., Awaitable[Any]],
) -> None:
    table = Table()
    await ackbus_endpoint("table", table)
    dealer = await ackbus_client(table_ackbus.TableClient, service="dealer")
    reports = [
        await dealer.send_start_hand(table_id=f"t{i}", wait_ack=False, policy=LOSSY)
        for i in range(20)
    ]
    old = ackbus_bus.hub
    new = await ackbus_bus.restart_hub(down=0.1)
    assert new is not old
    reports += [
        await dealer.send_start_hand(table_id=f"u{i}", wait_ack=False, policy=LOSSY)
        for i in range(20)
    ]
    for r in reports:
        await r.wait(15)
    ackbus_bus.assert_exactly_once(reports)


async def test_exactly_once_names_what_was_not_acked(
    ackbus_bus: TestBus, ackbus_client: Callable[..., Awaitable[Any]]
) -> None:
    dealer = await ackbus_client(table_ackbus.TableClient, service="dealer")
    report = await dealer.send_start_hand(table_id="t1", policy=FAST.with_(deadline=0.3))
    assert not report  # no table at all
    with pytest.raises(AssertionError, match=r"poker.StartHand [0-9a-f]{32}: not acked"):
        ackbus_bus.assert_exactly_once([report])


async def test_assert_idempotent_takes_an_async_observer() -> None:
    table = Table()

    async def dealt() -> set[str]:
        return set(table.dealt)

    await assert_idempotent(table.on_start_hand, table_pb2.StartHand(table_id="x"), dealt)
    shown = r"after one run:  \['x', 'x', 'y'\]\n  after two runs: \['x', 'x', 'y', 'y'\]"
    with pytest.raises(AssertionError, match=shown):
        await assert_idempotent(
            table.on_start_hand, table_pb2.StartHand(table_id="y"), lambda: list(table.runs)
        )


def test_the_virtual_clock_skips_the_wait() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        began = loop.time()
        await asyncio.sleep(3600)  # an hour: the test's timeout would end a real one
        return loop.time() - began

    assert run_virtual(scenario()) >= 3600
