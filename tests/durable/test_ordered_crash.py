"""Order per key across receiver crashes, with real processes: a durable receiver
killed with -9 twice mid-stream (issue 17, item 2's scenario).

A hub and ordered_receiver.py run as processes; the sender, durable too, runs in the
test process and pipelines KEYS x PER_KEY StartHand messages ordered by ``table_id``,
the keys interleaved. The receiver is killed -9 twice while they flow and restarted on
the same store. One message is poison (its handler always raises): it is dead-lettered
after its attempts, and its key goes on. Checked on the receiver's committed table:
every key's hands were applied exactly once and in send order, the poison's never.

The suite runs 20 keys x 10 messages; ``ACKBUS_CHAOS=1`` (make chaos) 100 keys x 20.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from ackbus import DeliveryReport, Policy
from ackbus.endpoint import Endpoint
from helpers import settle
from poker import table_pb2
from proc_harness import Procs, free_port

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
CHAOS = os.environ.get("ACKBUS_CHAOS") == "1"
KEYS, PER_KEY = (100, 20) if CHAOS else (20, 10)
POISON = ("t3", 7)
POLICY = Policy(
    ack_timeout=0.5,
    max_attempts=4,
    backoff_base=0.05,
    backoff_cap=0.3,
    deadline=90.0,
    retry_rejected=True,
    ordering_key="table_id",
)


class Receiver:
    def __init__(self, procs: Procs, hub: str, tmp: Path) -> None:
        self.procs, self.hub, self.tmp = procs, hub, tmp
        self.db = tmp / "receiver.db"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        self.proc = self.procs.start(
            str(HERE / "ordered_receiver.py"),
            "--hub", self.hub,
            "--store", str(self.db),
            "--runs", str(self.tmp / "runs.log"),
            "--poison", f"{POISON[0]}:{POISON[1]}",
            ready=b"ready",
        )  # fmt: skip

    def kill_and_restart(self) -> None:
        assert self.proc is not None
        self.procs.kill(self.proc)
        self.kills += 1
        self.start()


async def test_receiver_kill_9_twice_keeps_every_keys_order_exactly_once(
    procs: Procs, tmp_path: Path
) -> None:
    port = free_port()
    procs.hub(port)
    hub = f"tcp://127.0.0.1:{port}"
    receiver = Receiver(procs, hub, tmp_path)
    receiver.start()
    total = KEYS * PER_KEY
    kill_at = {total // 3, 2 * total // 3}
    started = time.monotonic()
    reports: list[DeliveryReport] = []
    async with Endpoint(
        "dealer", hub, store=f"sqlite:///{tmp_path / 'sender.db'}", heartbeat=0.25
    ) as dealer:
        await asyncio.sleep(0.3)  # the receiver's HELLO is in
        for seq in range(PER_KEY):
            for k in range(KEYS):
                msg = table_pb2.StartHand(table_id=f"t{k}", seats=seq)
                reports.append(await dealer.send(msg, wait_ack=False, policy=POLICY))
                if len(reports) in kill_at:
                    await asyncio.sleep(0.05)  # handlers running, acks in flight
                    receiver.kill_and_restart()
            await asyncio.sleep(0.01)  # a stream, not one burst
        await settle(reports, 120)
        dead = dealer.dead_letters
        elapsed = time.monotonic() - started
    failed = [r for r in reports if not r]
    assert receiver.kills == 2
    # The poison message alone failed, after its attempts, and went to the dead letters.
    assert [(r.message_id, r.attempts >= POLICY.max_attempts) for r in failed] == [
        (reports[POISON[1] * KEYS + int(POISON[0][1:])].message_id, True)
    ], [str(r.error) for r in failed][:5]
    assert [d.message_id for d in dead] == [failed[0].message_id]
    # Every other hand applied exactly once, each key's in send order.
    with sqlite3.connect(receiver.db) as conn:
        rows = conn.execute("SELECT table_id, seats, msg_id FROM hands ORDER BY rowid").fetchall()
    applied: dict[str, list[int]] = defaultdict(list)
    for table_id, seats, _ in rows:
        applied[table_id].append(seats)
    assert len({mid for _, _, mid in rows}) == len(rows) == total - 1
    for k in range(KEYS):
        expected = [s for s in range(PER_KEY) if (f"t{k}", s) != POISON]
        assert applied[f"t{k}"] == expected, f"t{k}"
    runs = (tmp_path / "runs.log").read_text().splitlines()
    print(
        f"\n{KEYS} keys x {PER_KEY}: {total} sent in {elapsed:.1f} s, 2 receiver kills,"
        f" {len(runs)} handler runs for {len(rows)} applied (reruns of uncommitted runs"
        f" and the poison's {failed[0].attempts} attempts), 1 dead letter"
    )
