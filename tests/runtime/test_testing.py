"""ackbus.testing: the in-memory bus with faults, and run_twice."""

from __future__ import annotations

import asyncio

from ackbus import Context
from ackbus.testing import TestBus, run_twice
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
