"""Priority with real processes: messages waiting go by priority, with aging, wherever
they wait: in the sender's line for window room, and in the hub's hold queue.

The receiver is examples/services.py's table (``--delay``: seconds per StartHand, each run
one log line, in the order they ran). ``where="window"``: the sender runs in the test
process with a window of one, so every send but one waits in its line. ``where="hub"``:
the sender's window is the default and the table says ``max_concurrency=1``, so the hub
sends it one message at a time and holds the rest.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from ackbus import DeliveryReport
from ackbus._window import PRIORITY_STEP
from ackbus.endpoint import Endpoint
from helpers import FAST, settle
from poker import table_pb2
from proc_harness import Procs, free_port, runs

pytestmark = pytest.mark.slow

POLICY = FAST.with_(ack_timeout=2.0, deadline=20.0)


def order(log: Path) -> list[str]:
    return [mid for t, mid, _ in runs(log) if t == "poker.StartHand"]


WHERE = pytest.mark.parametrize("where", ["window", "hub"])


async def start_table(procs: Procs, tmp_path: Path, where: str) -> tuple[str, Path]:
    port = free_port()
    procs.hub(port)
    address = f"tcp://127.0.0.1:{port}"
    log = tmp_path / "table.log"
    limit = ("--max-concurrency", "1") if where == "hub" else ()
    procs.service("table", address, log, "--delay", "0.02", *limit)
    return address, log


def dealer(address: str, where: str) -> Endpoint:
    return Endpoint("dealer", address, window=1 if where == "window" else 1000, heartbeat=0.25)


async def send(ep: Endpoint, name: str, priority: int) -> DeliveryReport:
    msg = table_pb2.StartHand(table_id=name, seats=2)
    return await ep.send(msg, wait_ack=False, priority=priority, policy=POLICY)


@WHERE
async def test_high_priority_sends_queued_behind_low_ones_go_first(
    procs: Procs, tmp_path: Path, where: str
) -> None:
    """The issue's measurement: 30 of priority 0, then 5 of priority 9, at once through a
    window of one (or to a receiver taking one at a time) to a 20 ms handler. The five
    used to run last (positions 30-34)."""
    address, log = await start_table(procs, tmp_path, where)
    async with dealer(address, where) as ep:
        low = [asyncio.create_task(send(ep, f"low{i}", 0)) for i in range(30)]
        await asyncio.sleep(0)  # the low ones are in line first
        high = [asyncio.create_task(send(ep, f"high{i}", 9)) for i in range(5)]
        async with asyncio.timeout(10):
            reports = await asyncio.gather(*low, *high)
        await settle(reports, 20)
    assert all(reports), [r.error for r in reports if not r][:3]
    ran = order(log)
    assert len(ran) == 35
    high_ids = {r.message_id.hex() for r in reports[30:]}
    positions = sorted(ran.index(m) for m in high_ids)
    assert positions[-1] <= 6, positions  # behind at most the one already in flight


@WHERE
async def test_a_steady_high_priority_stream_does_not_starve_a_low_one(
    procs: Procs, tmp_path: Path, where: str
) -> None:
    """High priorities arrive faster than the handler runs; the low one, aging, still
    goes within about its priority gap's worth of waiting."""
    address, log = await start_table(procs, tmp_path, where)
    async with dealer(address, where) as ep:
        stream = [await send(ep, "first", 9)]
        low_task = asyncio.create_task(send(ep, "low", 0))
        await asyncio.sleep(0)
        sent_low = time.monotonic()
        stream_end = sent_low + 3.0
        tasks = []
        while time.monotonic() < stream_end:  # 100 a second against 50 handled
            tasks.append(asyncio.create_task(send(ep, "high", 9)))
            await asyncio.sleep(0.01)
        low = await low_task
        await low.wait(20)
        waited = time.monotonic() - sent_low if not low.done else None
        stream += await asyncio.gather(*tasks)
        await settle(stream, 30)
    assert low, low.error
    ran = order(log)
    low_at = ran.index(low.message_id.hex())
    later_high = [m for m in ran[low_at + 1 :] if m != low.message_id.hex()]
    assert later_high, "the stream ended before the low-priority message ran: not starved?"
    assert low.latency is not None
    # Aging: 9 levels of priority are worth 9 * PRIORITY_STEP seconds of waiting; allow
    # the handler's own queue and a loaded machine a generous margin.
    assert low.latency < 9 * PRIORITY_STEP + 1.5, (low.latency, waited)
