"""Two instances of a service share a PostgreSQL store; the one that committed last is
killed with -9 and never restarted, and a fresh instance joins after each kill, so two
are always live. Every message's effect row must exist exactly once and every report
must be true (issue 16, "What it must show").

Real processes (a hub, the receivers: pg_receiver.py), a real PostgreSQL server, TCP on
127.0.0.1; the sender is this test's own endpoint. The suite runs 600 messages with 2
kills; ``ACKBUS_CHAOS=1`` (``make chaos``) runs 3,000 with 5.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from ackbus import DeliveryReport, Policy
from ackbus.endpoint import Endpoint
from ackbus.store import PostgresStore
from ackbus.wire_pb2 import Bye
from proc_harness import Procs, free_port

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
CHAOS = os.environ.get("ACKBUS_CHAOS") == "1"
EFFECTS = (
    "CREATE TABLE effects (msg_id text NOT NULL, instance text NOT NULL,"
    " seq bigint GENERATED ALWAYS AS IDENTITY)"
)
"""No unique key on purpose: an effect applied twice shows as two rows."""
SLOW_ACK = "0.03"
"""Seconds each receiver holds its acks after a commit (pg_receiver.py), so that kills
often land between "committed" and "acked"."""
POLICY = Policy(ack_timeout=0.5, max_attempts=200, backoff_cap=0.5, deadline=150.0)


class Receivers:
    """The live instances of service "sink", by instance id."""

    def __init__(self, procs: Procs, hub: str, url: str, logs: Path) -> None:
        self.procs = procs
        self.logs = logs
        self.started = 0
        self.hub = hub
        self.url = url
        self.live: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: list[str] = []

    def start(self, *, slow_commit: str = "0") -> str:
        self.started += 1
        proc = self.procs.start(
            str(HERE / "pg_receiver.py"), "--hub", self.hub, "--store", self.url,
            "--slow-ack", SLOW_ACK, "--slow-commit", slow_commit,
            "--log", str(self.logs / f"receiver-{self.started}.log"),
            ready=b"ready", timeout=30.0,
        )  # fmt: skip
        # Procs.start read the ready line ("ready INSTANCE") to find it; ask the store.
        instance = self._instance_of(proc.pid)
        self.live[instance] = proc
        return instance

    def _instance_of(self, pid: int) -> str:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT instance FROM ackbus.instances WHERE service = 'sink' AND pid = %s", (pid,)
            ).fetchone()
        assert row is not None, f"receiver pid {pid} has no instance row"
        return str(row[0])

    def kill_last_committer(self) -> str:
        """kill -9 the live instance that committed the newest effect row."""
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT instance FROM effects ORDER BY seq DESC LIMIT 50"
            ).fetchall()
        victim = next((str(r[0]) for r in rows if str(r[0]) in self.live), None)
        assert victim is not None, "no live instance committed anything yet"
        Procs.kill(self.live.pop(victim))
        self.killed.append(victim)
        return victim

    def stop_all(self) -> list[dict[str, int]]:
        stats = []
        for proc in self.live.values():
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
            stats.append(json.loads(out.splitlines()[-1]))
        self.live.clear()
        return stats


def effects(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT msg_id) FROM effects").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def run(procs: Procs, url: str, logs: Path, total: int, kills: int) -> dict[str, object]:
    port = free_port()
    procs.hub(port)
    hub = f"tcp://127.0.0.1:{port}"
    PostgresStore(url).execute_script(EFFECTS)
    receivers = Receivers(procs, hub, url, logs)
    for _ in range(2):
        await asyncio.to_thread(receivers.start)
    reports: list[DeliveryReport] = []
    every = total // (kills + 1)
    started = time.monotonic()
    async with Endpoint("dealer", hub, policy=POLICY, heartbeat=0.25) as ep:

        async def send_all() -> None:
            # A steady stream (about 200 a second), so that each kill lands while the
            # victim has messages in flight: handled and committed but not acked, or
            # received and not yet committed.
            for i in range(total):
                reports.append(await ep.send(Bye(reason=str(i)), wait_ack=False))
                if i % 10 == 9:
                    await asyncio.sleep(0.05)

        async def kill_along() -> None:
            for k in range(1, kills + 1):
                # Poll: nothing announces another process's commit.
                while (await asyncio.to_thread(effects, url))[0] < k * every:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                await asyncio.to_thread(receivers.kill_last_committer)
                await asyncio.to_thread(receivers.start)  # a fresh instance, never the old one

        async with asyncio.timeout(POLICY.deadline + 60):
            await asyncio.gather(send_all(), kill_along())
            for r in reports:
                await r.wait(POLICY.deadline + 5)
    elapsed = time.monotonic() - started
    stats = receivers.stop_all()
    rows, distinct = effects(url)
    failed = [r for r in reports if not r]
    return {
        "messages": len(reports),
        "true": len(reports) - len(failed),
        "first_failures": [str(r.error) for r in failed[:3]],
        "rows": rows,
        "distinct": distinct,
        "kills": len(receivers.killed),
        "retried": sum(1 for r in reports if r.attempts > 1),
        "survivor_duplicates": sum(s["duplicates"] for s in stats),
        "seconds": round(elapsed, 1),
    }


def in_transaction(url: str, instance: str) -> bool:
    """Whether ``instance``'s writer has a transaction open (its statements ran)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND state = 'idle in transaction'",
            (f"ackbus:sink:{instance}",),
        ).fetchone()
    return bool(row and row[0])


async def frozen(procs: Procs, url: str, logs: Path) -> dict[str, object]:
    """Two instances; the one whose transactions stay open 0.3 s is frozen (SIGSTOP) in
    the middle of one while messages stream; later it is thawed (SIGCONT). A stopped
    process is a stalled one to the hub (its kernel keeps the connection up): it is
    forgotten after the hub's stall limit, 12 s here (docs/protocol.md, Liveness)."""
    port = free_port()
    procs.hub(port, "--stall-limit", "12")
    hub = f"tcp://127.0.0.1:{port}"
    PostgresStore(url).execute_script(EFFECTS)
    receivers = Receivers(procs, hub, url, logs)
    slow = await asyncio.to_thread(receivers.start, slow_commit="0.3")
    await asyncio.to_thread(receivers.start)
    reports: list[DeliveryReport] = []
    policy = POLICY.with_(deadline=60.0)
    async with Endpoint("dealer", hub, policy=policy, heartbeat=0.25) as ep:

        async def send(n: int) -> None:
            for i in range(n):
                reports.append(await ep.send(Bye(reason=str(len(reports))), wait_ack=False))
                if i % 10 == 9:
                    await asyncio.sleep(0.05)

        async with asyncio.timeout(policy.deadline + 30):
            await send(100)
            while not await asyncio.to_thread(in_transaction, url, slow):  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # poll: another process's transaction
            receivers.live[slow].send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            await send(100)
            for r in reports:
                await r.wait(policy.deadline + 5)
            settled = time.monotonic() - stopped
        receivers.live[slow].send_signal(signal.SIGCONT)
        await asyncio.sleep(2.0)  # the thawed instance's commit fails; nothing more lands
    rows, distinct = effects(url)
    stats = receivers.stop_all()
    return {
        "messages": len(reports),
        "true": sum(1 for r in reports if r),
        "first_failures": [str(r.error) for r in reports if not r][:3],
        "rows": rows,
        "distinct": distinct,
        "settled_after_stop": round(settled, 1),
        "frozen_handled": stats[0]["handled"],
    }


def test_a_frozen_instance_holding_inbox_records_neither_doubles_nor_blocks_forever(
    procs: Procs, pg_url: str, tmp_path: Path
) -> None:
    """The server ends the frozen instance's idle transaction (idle_in_transaction_session_
    timeout, 10 s), which releases the records its sibling waits for; the frozen one's
    commit then fails when it is thawed: every message once, every report true."""
    result = asyncio.run(frozen(procs, pg_url, tmp_path))
    print("pg frozen instance:", result)
    assert result["true"] == 200, result
    assert (result["rows"], result["distinct"]) == (200, 200), result


def test_effects_once_per_service_across_kill_9s_of_the_committing_instance(
    procs: Procs, pg_url: str, tmp_path: Path
) -> None:
    total, kills = (3000, 5) if CHAOS else (600, 2)
    try:
        result = asyncio.run(run(procs, pg_url, tmp_path, total, kills))
    finally:
        for log in sorted(tmp_path.glob("receiver-*.log")):
            lines = log.read_text(errors="replace").splitlines()
            if lines:
                print(f"{log.name}: {len(lines)} lines, last:", *lines[-5:], sep="\n  ")
    print("pg shared inbox:", result)
    assert result["kills"] == kills
    assert result["true"] == total, result
    assert (result["rows"], result["distinct"]) == (total, total), (
        f"effect rows: {result['rows']} for {result['distinct']} messages (of {total})"
    )
