"""Heartbeats at a hub with many instances: sent in a few wake-ups per interval, answered
at once, never sent to a hub that has not welcomed the sender."""

from __future__ import annotations

import asyncio
import contextlib

import helpers
from ackbus import Endpoint
from ackbus.hub import HEARTBEAT_SLOTS

INSTANCES = 40
INTERVAL = 1.0


async def test_a_hubs_heartbeats_to_many_instances_share_a_few_wake_ups() -> None:
    """40 instances welcomed 10 ms apart (0.4 s in all): heartbeats due at 40 moments
    per interval. The hub sends them at slot boundaries (a twentieth of an interval), so
    over three intervals at most ceil(0.4 / 0.05) + 1 = 9 wake-ups per interval send
    any, not 40; every instance answers each, so none is ever thought silent."""
    async with helpers.running_hub("tcp", heartbeat=INTERVAL) as running:
        hub = running.hub
        loop = asyncio.get_running_loop()
        sent_at: list[float] = []
        send = hub.send_heartbeat

        def recording(peer: bytes) -> None:
            sent_at.append(loop.time())
            send(peer)

        hub.send_heartbeat = recording  # type: ignore[method-assign]
        async with contextlib.AsyncExitStack() as stack:
            for i in range(INSTANCES):
                ep = Endpoint(f"svc{i % 5}", running.address, heartbeat=INTERVAL)
                await stack.enter_async_context(ep)
                await asyncio.sleep(0.01)
            await asyncio.sleep(INTERVAL)  # every instance's first heartbeat is past
            sent_at.clear()
            await asyncio.sleep(3 * INTERVAL)
            # One wake-up's sends lie within a few ms; two wake-ups, a slot apart.
            wake_ups = [t for n, t in enumerate(sent_at) if n == 0 or t - sent_at[n - 1] > 0.005]
            assert len(hub.routing.instances()) == INSTANCES
        assert INTERVAL / HEARTBEAT_SLOTS == 0.05
        per_interval = 8 + 2  # 0.4 s of spread in 50 ms slots, and its two edges
        print(f"\n{len(sent_at)} heartbeats in {len(wake_ups)} wake-ups over 3 intervals")
        assert len(sent_at) >= 2 * INSTANCES  # every instance heard from the hub
        assert len(wake_ups) <= 3 * per_interval + 1
        assert hub.stats.dead_peers == 0
        assert hub.stats.stalled == 0
