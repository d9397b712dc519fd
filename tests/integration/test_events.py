"""Events with real processes: the schema says who subscribes, and a publish is done only
when every declared subscriber service handled it, whoever was running when it went out.

Subscribers are examples/services.py processes (audit, lobby; each handler run one line in
a log file); the publisher runs in the test process. The full versions (more events,
more hub kills) run under ``make chaos``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ackbus import AckTimeout, DeliveryReport
from ackbus.endpoint import Endpoint
from helpers import eventually, settle
from poker import table_ackbus, table_pb2
from proc_harness import Procs, free_port, runs

pytestmark = pytest.mark.slow

CHAOS = os.environ.get("ACKBUS_CHAOS") == "1"
"""``make chaos``: the long versions."""
QUICK = table_ackbus.HAND_STARTED_EVENT_POLICY.with_(
    ack_timeout=0.5, backoff_cap=1.0, subscriber_policies=()
)
"""The event's policy (declared subscribers poker.Audit and poker.Lobby), retried sooner,
with the event's limits for both (Audit's own 300 s would outlast the test)."""


def event_runs(log: Path) -> Counter[str]:
    return Counter(mid for t, mid, _ in runs(log) if t == "poker.HandStarted")


async def publish_many(
    publisher: Endpoint, n: int, *, every: float = 0.0, at: dict[int, object] | None = None
) -> list[DeliveryReport]:
    client = table_ackbus.TableEvents(publisher)
    reports = []
    for i in range(n):
        msg = table_pb2.HandStarted(table_id=f"t{i}", hand_number=i)
        reports.append(await client.publish_hand_started(msg, wait_ack=False, policy=QUICK))
        if at and i in at:
            await at[i]()  # type: ignore[operator]
        if every:
            await asyncio.sleep(every)
    return reports


def check_every_subscriber_handled_each_once(reports: list[DeliveryReport], *logs: Path) -> None:
    failed = [r.error for r in reports if not r]
    assert failed == [], failed[:3]
    ids = {r.message_id.hex() for r in reports}
    for report in reports:
        assert sorted(i.service for i in report.acked_by) == ["audit", "lobby"]
    for log in logs:
        handled = event_runs(log)
        assert set(handled) == ids, f"{log.name}: {len(ids - set(handled))} events never handled"
        assert max(handled.values()) == 1, f"{log.name}: a handler ran twice"


async def test_a_declared_subscriber_that_starts_late_gets_every_event(
    procs: Procs, tmp_path: Path
) -> None:
    port = free_port()
    procs.hub(port)
    address = f"tcp://127.0.0.1:{port}"
    audit_log, lobby_log = tmp_path / "audit.log", tmp_path / "lobby.log"
    procs.service("lobby", address, lobby_log)
    n = 1000 if CHAOS else 60
    async with Endpoint("table", address, heartbeat=0.25) as publisher:
        reports = await publish_many(publisher, n)
        await asyncio.sleep(5.0 if CHAOS else 1.5)  # audit is down while they go out
        assert not any(r.done for r in reports)  # routed to lobby only: not done
        procs.service("audit", address, audit_log)
        await settle(reports, 25)
    check_every_subscriber_handled_each_once(reports, audit_log, lobby_log)


SCALED = table_ackbus.HAND_STARTED_EVENT_POLICY.with_(
    ack_timeout=0.5, backoff_cap=0.5, deadline=2.0
)
"""The generated event policy with the event's own deadline cut to 2 s: Lobby (no entry
for its deadline) is waited for 2 s; Audit keeps its rpc policy's 300 s and 100 attempts."""


async def test_each_subscribers_policy_governs_its_own_delivery(
    procs: Procs, tmp_path: Path
) -> None:
    """Audit down for twice the event's (and Lobby's) deadline, within its own: it still
    gets every event, and every report is true. Then Lobby down for good: each report
    fails at Lobby's deadline naming it, while Audit acked, without waiting for Audit's
    300 s."""
    assert SCALED.limits("poker.Audit") == (100, 300.0)
    assert SCALED.limits("poker.Lobby") == (5, 2.0)
    port = free_port()
    procs.hub(port)
    address = f"tcp://127.0.0.1:{port}"
    audit_log, lobby_log = tmp_path / "audit.log", tmp_path / "lobby.log"
    lobby = procs.service("lobby", address, lobby_log)
    n = 20
    async with Endpoint("table", address, heartbeat=0.25) as publisher:
        events = table_ackbus.TableEvents(publisher)
        reports = [
            await events.publish_hand_started(
                table_id="t", hand_number=i, wait_ack=False, policy=SCALED
            )
            for i in range(n)
        ]
        await asyncio.sleep(4.0)  # past the event's 2 s: only Audit's own keeps it alive
        assert not any(r.done for r in reports)
        procs.service("audit", address, audit_log)
        await settle(reports, 20)
        check_every_subscriber_handled_each_once(reports, audit_log, lobby_log)

        procs.kill(lobby, signal.SIGTERM)  # a clean stop: the hub forgets it at once
        lobby.wait(10)
        started = time.monotonic()
        late = [
            await events.publish_hand_started(
                table_id="u", hand_number=i, wait_ack=False, policy=SCALED
            )
            for i in range(n)
        ]
        await settle(late, 20)
        took = time.monotonic() - started
    assert 2.0 <= took < 20.0  # Lobby's deadline, not Audit's 300 s
    for r in late:
        assert not r
        assert [i.service for i in r.acked_by] == ["audit"]
        assert isinstance(r.error, AckTimeout)
        assert "from subscriber poker.Lobby (its deadline passed)" in str(r.error)
    assert len(event_runs(audit_log)) == 2 * n


async def test_events_survive_hub_kill_9_and_restart(procs: Procs, tmp_path: Path) -> None:
    port = free_port()
    hub = [procs.hub(port)]
    address = f"tcp://127.0.0.1:{port}"
    audit_log, lobby_log = tmp_path / "audit.log", tmp_path / "lobby.log"
    procs.service("audit", address, audit_log)
    procs.service("lobby", address, lobby_log)
    n, kills = (5000, 5) if CHAOS else (300, 2)

    async def crash_hub() -> None:
        procs.kill(hub[0])
        await asyncio.sleep(0.3)
        hub[0] = procs.hub(port)

    at = {n * (k + 1) // (kills + 1): crash_hub for k in range(kills)}
    async with Endpoint("table", address, heartbeat=0.25) as publisher:
        reports = await publish_many(publisher, n, every=0.002, at=at)
        await settle(reports, 60 if CHAOS else 25)
    check_every_subscriber_handled_each_once(reports, audit_log, lobby_log)


PUBLISHER = Path(__file__).with_name("publisher.py")


def finish(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """Wait for a publisher's ``done`` line and return its summary."""
    assert proc.stdout is not None
    proc.wait(timeout)
    out = proc.stdout.read().decode()
    done = [line for line in out.splitlines() if line.startswith("done ")]
    assert done, f"publisher exited {proc.returncode} without done: {out!r}"
    summary: dict[str, Any] = json.loads(done[-1][5:])
    return summary


async def test_a_durable_publisher_killed_mid_stream_still_reaches_a_late_subscriber(
    procs: Procs, tmp_path: Path
) -> None:
    """The publisher is killed -9 mid-stream while audit is down; restarted, it resumes
    its outbox, and audit, started last, handles every accepted event once."""
    port = free_port()
    procs.hub(port)
    address = f"tcp://127.0.0.1:{port}"
    audit_log, lobby_log = tmp_path / "audit.log", tmp_path / "lobby.log"
    procs.service("lobby", address, lobby_log)
    accepted = tmp_path / "accepted.log"
    store = f"sqlite:///{tmp_path / 'publisher.db'}"
    argv = [str(PUBLISHER), "--hub", address, "--store", store]
    argv += ["--accepted", str(accepted)]
    n = 1000 if CHAOS else 200
    first = procs.start(*argv, "--count", str(n), ready=b"ready")
    await eventually(
        lambda: accepted.exists() and len(accepted.read_text().split()) >= n // 2,
        timeout=30,
        every=0.01,
    )
    procs.kill(first)
    published = accepted.read_text().split()
    second = procs.start(*argv, ready=b"ready")  # resumes the outbox, publishes nothing new
    await asyncio.sleep(1.0)  # audit still down: the resumed events wait for it
    procs.service("audit", address, audit_log)
    summary = await asyncio.to_thread(finish, second, 120)
    assert summary["failed"] == []
    assert summary["resumed"] >= len(published) // 2, summary  # most were still pending
    for log in (audit_log, lobby_log):
        handled = event_runs(log)
        missing = set(published) - set(handled)
        assert not missing, f"{log.name}: {len(missing)} accepted events never handled"
        # Each handled once, bar those in flight at the kill (re-sent, then deduped).
        assert max(handled.values()) == 1, f"{log.name}: a handler ran twice"
