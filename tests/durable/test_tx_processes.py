"""The user's transaction with real processes, on both stores (a real PostgreSQL server,
tests/support/pg_server.py, and a SQLite file): a sender process (tests/durable/tx_sender.py)
writes an order row and sends a typed message in one ``ep.transaction()``. Committed:
delivered exactly once. Rolled back: never sent, no row. The sender killed with -9 right
after a commit and before that message was transmitted: the restarted sender delivers
it, once."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import helpers
from proc_harness import Procs
from store_db import Db, order_receiver, outcome, run_tx_sender


async def test_a_user_transaction_commits_rolls_back_and_survives_kill_9_after_its_commit(
    procs: Procs, db: Db
) -> None:
    hub, table, got = order_receiver(procs)
    committed = [f"c{i}" for i in range(5)]
    rolled_back = [f"r{i}" for i in range(3)]
    killed = [f"k{i}" for i in range(4)]
    async with table:
        done = await run_tx_sender(procs, hub, db, "commit", committed)
        assert outcome(done) == ["ACKED"] * 5
        done = await run_tx_sender(procs, hub, db, "rollback", rolled_back)
        assert outcome(done) == ["FAILED"] * 3  # Cancelled("not sent: ... rolled back")
        done = await run_tx_sender(procs, hub, db, "kill", killed)
        assert done.returncode == -signal.SIGKILL
        assert db.outbox() >= 1, "the last transaction's message is in the outbox"
        assert got["k3"] == 0, "killed before it was transmitted"
        done = await run_tx_sender(procs, hub, db, "resume", [])
        assert set(outcome(done)) == {"ACKED"}
        await helpers.eventually(lambda: got["k3"] == 1, timeout=10.0)
        await asyncio.sleep(0.3)
    assert got == Counter(committed + killed), "each committed message once, no rolled back one"
    assert sorted(r[0] for r in db.rows("SELECT id FROM orders")) == sorted(committed + killed)
    assert db.outbox() == 0
