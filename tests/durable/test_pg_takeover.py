"""A running instance takes over the outbox of a sibling that is gone for good (real
processes, a real PostgreSQL server): a sender process of service "front" commits
transactions that send ``poker.StartHand`` and is killed with -9 right after its last
commit, before that message was transmitted, and never restarted. Its sibling, an
instance of "front" that was running all along, finds the dead instance's lock free at
its next look (``takeover_every``), adopts the pending row and delivers it, once."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import helpers
from ackbus.endpoint import Endpoint
from ackbus.store import PostgresStore
from proc_harness import Procs
from store_db import POLICY, Db, order_receiver, run_tx_sender


async def test_a_running_sibling_takes_over_the_outbox_of_a_sender_killed_for_good(
    procs: Procs, pg_url: str
) -> None:
    db = Db("postgresql", pg_url)
    db.script("CREATE TABLE orders (id TEXT PRIMARY KEY, seats INTEGER NOT NULL)")
    hub, table, got = order_receiver(procs)
    store = PostgresStore(pg_url, takeover_every=0.5)
    sibling = Endpoint("front", hub, heartbeat=helpers.HEARTBEAT, policy=POLICY, store=store)
    orders = ["k0", "k1", "k2"]
    async with table, sibling:
        assert sibling.resumed == []  # the sender was not there yet
        done = await run_tx_sender(procs, hub, db, "kill", orders)
        assert done.returncode == -signal.SIGKILL
        # k2's row, and maybe an acked one whose lazy delete the kill lost.
        pending = db.rows("SELECT instance FROM ackbus.outbox")
        assert 1 <= len(pending) <= 3
        assert set(pending) == {("front-1",)}
        await helpers.eventually(lambda: got["k2"] == 1, timeout=10.0)
        assert len(sibling.resumed) == len(pending)
        for report in sibling.resumed:
            assert await asyncio.wait_for(report.wait(), 5.0)
        await asyncio.sleep(0.3)
    assert got == Counter(orders)
    assert db.outbox() == 0
    assert db.rows("SELECT 1 FROM ackbus.instances WHERE instance = 'front-1'") == []
