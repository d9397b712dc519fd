"""Three hubs on three hosts, services on two others, on a namespaced network with CURVE
(issue 19, "What it must show", first item), with real processes.

Hosts h1, h2, h3 each run a hub (keys: the deployed, secure setup); s1 runs two table
instances, s2 the audit and lobby subscribers; the test process is the durable sender,
on the bridge's own address. Every endpoint is given all three hubs (the services as one
DNS name, ``dns://hubs.ackbus.test:5555``, that resolves to the three). While StartHand
commands flow (each run publishes a HandStarted that audit and lobby both subscribe to),
in turn: h1 is killed with -9 and never restarted, h2's host is partitioned and healed,
and h3 is frozen with SIGSTOP and thawed. Then: every command acked and run exactly once
over both tables, every event handled exactly once by each subscriber, every publish
report true; the send-to-ack p50, p99 and longest wait are printed (the failover target
is issue 19's). The suite runs 300 commands with 2 s faults; ``make chaos`` 2,500
commands (5,000 messages) with 5 s faults.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import netns
import pytest
from ackbus import DeliveryReport
from ackbus.endpoint import Endpoint
from curve_keys import enroll
from helpers import each_event_handled_once, settle
from poker import table_ackbus, table_pb2
from proc_harness import SERVICES, counters, type_runs

pytestmark = pytest.mark.slow

CHAOS = os.environ.get("ACKBUS_CHAOS") == "1"
PORT = 5555
HUBS_NAME = "hubs.ackbus.test"


@pytest.fixture
def net() -> Iterator[netns.Cluster]:
    netns.require()
    with netns.Cluster(["h1", "h2", "h3", "s1", "s2"]) as cluster:
        yield cluster


class Deployment:
    """Three hubs (h1-h3), two tables on s1, audit and lobby on s2; each given all hubs."""

    def __init__(self, net: netns.Cluster, tmp_path: Path) -> None:
        self.net = net
        hub_dir, self.hub_key, self.secrets = enroll(
            tmp_path / "keys", ["table", "audit", "lobby", "dealer"]
        )
        self.hubs = {
            name: net.start(
                name,
                "-m",
                "ackbus.hub",
                "--bind",
                net.url(name, PORT),
                "--keys",
                str(hub_dir),
                "--log-level",
                "INFO",
                ready=b"listening",
                stderr=tmp_path / f"{name}.err",
            )
            for name in ("h1", "h2", "h3")
        }
        self.urls = [net.url(name, PORT) for name in self.hubs]
        # The services find the hubs by one DNS name with three addresses (issue 19:
        # "hub addresses can come from a DNS name"); the sender, in the test process,
        # outside the namespaces, is given the three addresses.
        net.name(HUBS_NAME, list(self.hubs))
        self.logs = {name: tmp_path / f"{name}.log" for name in ("t1", "t2", "audit", "lobby")}
        self.tables = [self._service("s1", "table", t, "--instance", t) for t in ("t1", "t2")]
        self.subscribers = [
            self._service("s2", "audit", "audit"),
            self._service("s2", "lobby", "lobby"),
        ]
        self.sender = Endpoint(
            "dealer",
            self.urls,
            store=f"sqlite:///{tmp_path / 'dealer.db'}",
            keys=self.secrets["dealer"],
            hub_key=self.hub_key,
            heartbeat=0.25,
        )

    def _service(self, host: str, name: str, log: str, *extra: str) -> Any:
        env = {"ACKBUS_KEYS": str(self.secrets[name]), "ACKBUS_HUB_KEY": str(self.hub_key)}
        hub_args = ["--hub", f"dns://{HUBS_NAME}:{PORT}"]
        return self.net.start(
            host,
            str(SERVICES),
            "--service",
            name,
            *hub_args,
            "--log",
            str(self.logs[log]),
            *extra,
            ready=b"ready",
            env=env,
            stderr=self.logs[log].with_suffix(".err"),
        )

    async def stream(
        self, n: int, every: float, faults: Coroutine[Any, Any, None]
    ) -> list[DeliveryReport]:
        """Send ``n`` StartHand commands, one each ``every`` s, while ``faults`` runs (the
        stream outlasts it), and wait until every report settled."""
        reports: list[DeliveryReport] = []
        async with self.sender:
            faulting = asyncio.ensure_future(faults)
            client = table_ackbus.TableClient(self.sender)
            i = 0
            while i < n or not faulting.done():
                if i < n:
                    msg = table_pb2.StartHand(table_id=f"t{i % 50}", seats=6, button_seat=i % 6)
                    reports.append(await client.send_start_hand(msg, wait_ack=False))
                    i += 1
                await asyncio.sleep(every)
            await asyncio.wait_for(faulting, 60)
            await settle(reports, 120 if CHAOS else 60)
        return reports

    async def check(self, reports: list[DeliveryReport]) -> list[dict[str, int]]:
        """Every command acked and run once; every event handled once by each subscriber;
        every publish report true. The tables' counters."""
        n = len(reports)
        failed = [r for r in reports if not r]
        assert failed == [], failed[:3]
        logs = self.logs
        ran = type_runs(logs["t1"], "poker.StartHand") + type_runs(logs["t2"], "poker.StartHand")
        assert set(ran) == {r.message_id.hex() for r in reports}, "an acked command never ran"
        assert max(ran.values()) == 1, "a command ran twice"

        await each_event_handled_once(logs["audit"], logs["lobby"], n, 120 if CHAOS else 60)
        published = [counters(t) for t in self.tables]
        assert sum(c["failed"] for c in published) == 0, published
        assert sum(c["acked"] for c in published) == n, published
        for proc in self.subscribers:
            counters(proc)
        return published


async def run(
    deployment: Deployment,
    n: int,
    every: float,
    faults: Coroutine[Any, Any, None],
    marks: list[tuple[float, str]],
) -> str:
    """Stream, check every guarantee, and say what happened in one line."""
    started = time.monotonic()
    reports = await deployment.stream(n, every, faults)
    elapsed = time.monotonic() - started
    published = await deployment.check(reports)
    return (
        f"{n} commands + {n} events in {elapsed:.1f} s: 0 lost, 0 twice; "
        f"{summary(reports, marks)}; table publishes {published}"
    )


def summary(reports: list[DeliveryReport], marks: list[tuple[float, str]]) -> str:
    """p50, p99 and the longest send->ack; and the longest of the messages sent after
    each fault (``marks``: when each began, loop time, and its name)."""
    latencies = sorted(r.latency or 0.0 for r in reports)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    phases: dict[str, float] = {}
    for r in reports:
        sent = r.first_sent_at or 0.0
        phase = "before" + "".join(f" > {name}" for at, name in marks if at <= sent)[-30:]
        phases[phase] = max(phases.get(phase, 0.0), r.latency or 0.0)
    longest = ", ".join(f"{name.split(' > ')[-1]} {t * 1000:.0f}" for name, t in phases.items())
    return (
        f"send->ack p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, longest {latencies[-1] * 1000:.0f} ms "
        f"(sent after each fault, ms: {longest}); "
        f"retried {sum(r.attempts > 1 for r in reports)}"
    )


async def test_three_hubs_survive_a_kill_a_partition_and_a_freeze(
    net: netns.Cluster, tmp_path: Path
) -> None:
    n, fault, every = (2500, 5.0, 0.008) if CHAOS else (300, 2.0, 0.01)
    deployment = Deployment(net, tmp_path)
    marks: list[tuple[float, str]] = []

    async def faults() -> None:
        await asyncio.sleep(n * every / 4)
        marks.append((time.time(), "h1 killed"))
        net.procs.kill(deployment.hubs["h1"])  # -9, for good
        for name, fault_at in (
            ("h2 partitioned", lambda: net.partition("h2")),
            ("h2 healed", lambda: net.heal("h2")),
            ("h3 frozen", lambda: net.freeze("h3")),
            ("h3 thawed", lambda: net.thaw("h3")),
        ):
            await asyncio.sleep(fault)
            marks.append((time.time(), name))
            fault_at()

    line = await run(deployment, n, every, faults(), marks)
    print(f"3 hubs, CURVE; h1 killed, h2 partitioned, h3 frozen, {fault} s each; {line}")


async def test_a_service_host_partitioned_with_messages_pending_gets_them_after_the_heal(
    net: netns.Cluster, tmp_path: Path
) -> None:
    n, fault, every = (1000, 5.0, 0.005) if CHAOS else (200, 2.0, 0.005)
    deployment = Deployment(net, tmp_path)
    marks: list[tuple[float, str]] = []

    async def faults() -> None:
        await asyncio.sleep(n * every / 4)
        marks.append((time.time(), "s1 partitioned"))
        net.partition("s1")  # both tables: what is sent now waits for the heal
        await asyncio.sleep(fault)
        marks.append((time.time(), "s1 healed"))
        net.heal("s1")

    line = await run(deployment, n, every, faults(), marks)
    print(f"3 hubs, CURVE; the tables' host partitioned {fault} s mid-stream; {line}")
