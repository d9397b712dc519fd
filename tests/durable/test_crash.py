"""kill -9 at random points of a durable sender and a durable receiver, many times.

Real processes (sender.py, receiver.py, a hub), real TCP. After the storm both run to
completion and the books must balance:

* nothing lost: every message a sender accepted (``send`` returned) was either handled
  (its row is in the receiver's ``effects`` table) or is a dead letter at the sender;
* transactional effects exactly once: no message id has two ``effects`` rows;
* the sender's outbox is empty; restarted senders resumed pending messages;
* non-transactional effects (the receiver's run log) repeat only for messages in flight
  at a receiver crash: counted, and bounded by the kills;
* disk use stays bounded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from proc_harness import Procs, free_port

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ITERATIONS = 16
PER_RUN = 60
"""Messages each sender run sends (every tenth is refused on purpose)."""
SLOW_COMMIT = "0.01"
"""Seconds each commit is slowed by (slow_disk.py), so kills often land mid-commit."""


class Cluster:
    """A hub, one durable sender and one durable receiver, each restartable."""

    def __init__(self, procs: Procs, tmp: Path) -> None:
        self.procs = procs
        self.tmp = tmp
        port = free_port()
        procs.hub(port)
        self.hub = f"tcp://127.0.0.1:{port}"
        self.sender_db = tmp / "sender.db"
        self.receiver_db = tmp / "receiver.db"
        self.accepted = tmp / "accepted.log"
        self.runs = tmp / "runs.log"
        self.sender: subprocess.Popen[bytes] | None = None
        self.receiver: subprocess.Popen[bytes] | None = None
        self.kills: Counter[str] = Counter()
        self.sender_runs = 0

    def start_sender(self, count: int) -> None:
        self.sender_runs += 1
        self.sender = self.procs.start(
            str(HERE / "sender.py"),
            "--hub", self.hub,
            "--store", str(self.sender_db),
            "--accepted", str(self.accepted),
            "--count", str(count),
            "--tag", f"run{self.sender_runs}",
            "--slow-commit", SLOW_COMMIT,
            ready=b"ready",
        )  # fmt: skip

    def start_receiver(self) -> None:
        self.receiver = self.procs.start(
            str(HERE / "receiver.py"),
            "--hub", self.hub,
            "--store", str(self.receiver_db),
            "--runs", str(self.runs),
            "--slow-commit", SLOW_COMMIT,
            ready=b"ready",
        )  # fmt: skip

    def kill(self, which: str) -> None:
        proc = getattr(self, which)
        if proc is not None and proc.poll() is None:
            self.procs.kill(proc)
            self.kills[which] += 1
        setattr(self, which, None)


def finish(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, int]:
    """Wait for a sender's ``done`` line and return its summary."""
    assert proc.stdout is not None
    proc.wait(timeout)
    out = proc.stdout.read().decode()
    done = [line for line in out.splitlines() if line.startswith("done ")]
    assert done, f"sender exited {proc.returncode} without done: {out!r}"
    summary: dict[str, int] = json.loads(done[-1][5:])
    return summary


def test_kill_9_sender_and_receiver_at_random(procs: Procs, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("ACKBUS_CRASH_SEED", "20261126")))
    c = Cluster(procs, tmp_path)
    c.start_receiver()
    c.start_sender(PER_RUN)
    # The first storm is fixed: the receiver dies, then the sender dies with messages
    # pending, so a restart must resume them. The rest are random.
    plan = ["receiver", "sender"] + [
        rng.choice(["sender", "receiver", "both"]) for _ in range(ITERATIONS - 2)
    ]
    for victim in plan:
        time.sleep(rng.uniform(0.02, 0.4))
        if victim in ("receiver", "both"):
            c.kill("receiver")
        if victim in ("sender", "both"):
            c.kill("sender")
        if c.receiver is None and (victim != "receiver" or rng.random() < 0.7):
            c.start_receiver()
        if c.sender is None or c.sender.poll() is not None:
            c.start_sender(PER_RUN)
    if c.receiver is None:
        c.start_receiver()
    # Let the current sender finish, then one more run that only drains the outbox.
    assert c.sender is not None
    finish(c.sender, 60)
    c.start_sender(0)
    finish(c.sender, 60)
    assert c.receiver is not None
    c.receiver.send_signal(signal.SIGTERM)
    c.receiver.wait(10)

    accepted = c.accepted.read_text().split()
    with sqlite3.connect(c.receiver_db) as db:
        effects = Counter(mid for (mid,) in db.execute("SELECT msg_id FROM effects"))
    with sqlite3.connect(c.sender_db) as db:
        dead = dict(db.execute("SELECT hex(id), reason FROM ackbus_dead_letters").fetchall())
        outbox = db.execute("SELECT count(*) FROM ackbus_outbox").fetchone()[0]
    dead = {k.lower(): v for k, v in dead.items()}
    runs = Counter(c.runs.read_text().split())
    resumed = sum(int(n) for n in (tmp_path / "accepted.log.resumed").read_text().split())

    assert min(c.kills["sender"], c.kills["receiver"]) >= 3, c.kills
    assert len(accepted) >= PER_RUN, "the senders accepted too little to prove anything"
    lost = [m for m in accepted if m not in effects and m not in dead]
    assert lost == [], f"{len(lost)} accepted messages were neither handled nor dead letters"
    twice = {m: n for m, n in effects.items() if n > 1}
    assert twice == {}, f"transactional effects applied twice: {twice}"
    assert set(dead.values()) <= {"rejected"}, dead
    assert all(m not in effects for m in dead), "a dead letter was also handled"
    assert outbox == 0, f"{outbox} messages still in the sender's outbox"
    assert resumed > 0, "no sender restart resumed a pending message"
    repeated = {m: n for m, n in runs.items() if n > 1}
    # Each receiver crash can repeat only what it had in flight: a few sends' worth.
    assert len(repeated) <= 20 * c.kills["receiver"], repeated
    for db_file in (c.sender_db, c.receiver_db):
        size = sum(p.stat().st_size for p in tmp_path.glob(db_file.name + "*"))
        assert size < 4 * 1024 * 1024, f"{db_file.name} uses {size} bytes"
    print(
        f"\naccepted={len(accepted)} handled={len(effects)} dead={len(dead)} "
        f"kills={dict(c.kills)} resumed={resumed} repeated_runs={len(repeated)}"
    )
