"""``ackbus run`` under a rolling restart, with real processes (the pytest plugin's
``ackbus_hub`` and ``ackbus_service`` fixtures): a real ``ackbus hub``, two ``ackbus run``
instances of one service (tests/run/table_app.py), a sender streaming
commands with wait_ack; SIGTERM to one instance mid-stream and a new one started. Every
command is acked, and every one ran exactly once (counted from the instances' logs).

In memory and durable (``ACKBUS_STORE``: each replacement takes over the stopped
instance's SQLite store, and with it its instance id). The short version runs in ``make
test``; ``ACKBUS_CHAOS=1`` (``make chaos``) sends more
and restarts every instance in turn several times, alternating SIGTERM and SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from ackbus import Endpoint
from ackbus.testing.pytest_plugin import ServiceProcess
from helpers import eventually
from poker import table_ackbus

HERE = Path(__file__).resolve().parent
CHAOS = os.environ.get("ACKBUS_CHAOS") == "1"
MESSAGES = 3000 if CHAOS else 240
ROUNDS = 6 if CHAOS else 1
IN_FLIGHT = 16
"""Sends awaiting their acks at once: with 0.1 s handlers, each instance has several
handlers running whenever a signal arrives."""

POLICY = table_ackbus.TABLE_START_HAND_POLICY.with_(
    ack_timeout=2.0, backoff_base=0.05, backoff_cap=0.5, max_attempts=20, deadline=60
)


class Instances:
    """``ackbus run table_app:app`` processes (the pytest plugin's ``ackbus_service``),
    each with its own run log."""

    def __init__(self, start: Callable[..., ServiceProcess], tmp: Path, durable: bool) -> None:
        self._start = start
        self.tmp = tmp
        self.durable = durable
        self.logs: list[Path] = []
        self.count = 0

    def start(self, slot: int) -> ServiceProcess:
        """A new instance in ``slot`` (0 or 1); durable, it takes over the slot's store
        (and so its instance id), as a StatefulSet's pod does."""
        self.count += 1
        log = self.tmp / f"table-{self.count}.log"
        self.logs.append(log)
        # both entry points: the ackbus command's subcommand and python -m ackbus.run
        command = ("ackbus.cli", "run") if self.count % 2 else ("ackbus.run",)
        store = {"ACKBUS_STORE": f"sqlite:///{self.tmp}/slot-{slot}.db"} if self.durable else {}
        return self._start(
            "table_app:app",
            "--grace",
            "20",
            "--log-level",
            "WARNING",
            app_dir=HERE,
            env={"TABLE_APP_LOG": str(log), **store},
            command=command,
        )

    def hooks(self) -> list[str]:
        """What each instance's lifespan wrote, in start order."""
        return [Path(f"{log}.hooks").read_text() for log in self.logs]

    def runs(self, begun: bool = False) -> Counter[str]:
        """How often a handler ran to its end for each message id (``begun``: how often
        one began, cut short or not), over every instance's log."""
        return Counter(
            line.split()[0].lstrip("+")
            for log in self.logs
            if log.exists()
            for line in log.read_text().splitlines()
            if line.startswith("+") == begun
        )

    def busy(self, n: int) -> bool:
        """Whether instance ``n`` (0-based, in start order) runs a handler now."""
        lines = self.logs[n].read_text().splitlines() if self.logs[n].exists() else []
        begun = sum(1 for line in lines if line.startswith("+"))
        return begun > len(lines) - begun


async def _stop(proc: ServiceProcess, sig: signal.Signals) -> tuple[int, str]:
    """Signal an instance and wait for it to exit: its status and what it printed."""
    return await asyncio.to_thread(proc.stop, sig, 60)


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
async def test_rolling_restart_loses_nothing_and_runs_nothing_twice(
    ackbus_hub: str, ackbus_service: Callable[..., ServiceProcess], tmp_path: Path, durable: bool
) -> None:
    """In memory, each replacement starts while the old instance drains. Durable, each
    takes over the stopped one's store once it exited (one live process per store)."""
    hub = ackbus_hub
    instances = Instances(ackbus_service, tmp_path, durable)
    # (index in start order, slot, process) of the instances running
    live = [(slot, slot, await asyncio.to_thread(instances.start, slot)) for slot in (0, 1)]

    sent: list[bytes] = []
    failures: list[str] = []
    stopped: list[tuple[int, str]] = []
    async with Endpoint("dealer", hub, heartbeat=0.25) as ep:
        client = table_ackbus.TableClient(ep)
        room = asyncio.Semaphore(IN_FLIGHT)

        async def send(i: int) -> None:
            try:
                report = await client.send_start_hand(table_id=f"t{i}", seats=6, policy=POLICY)
                sent.append(report.message_id)
                if not report:
                    failures.append(f"{i}: {report.error}")
            finally:
                room.release()

        restarted = asyncio.Event()

        async def stream() -> None:
            """At least MESSAGES, and on until the restarts are over: however long a
            process takes to start, every restart happens mid-stream."""
            tasks = []
            i = 0
            while i < MESSAGES or not restarted.is_set():
                await room.acquire()
                tasks.append(asyncio.ensure_future(send(i)))
                i += 1
            await asyncio.gather(*tasks)

        streaming = asyncio.ensure_future(stream())
        # Restart an instance ROUNDS * 2 times while the stream goes on: the oldest one
        # running a handler gets the signal (the hub need not share the work evenly), and
        # its replacement starts in its slot.
        for r in range(ROUNDS * 2):
            await eventually(
                lambda r=r: len(sent) >= MESSAGES * (r + 1) // (ROUNDS * 2 + 2), timeout=120
            )
            # signalled while it runs handlers (not a promise: checked, then signalled)
            await eventually(
                lambda live=live: any(instances.busy(n) for n, _, _ in live), timeout=120
            )
            n, slot, old = next(each for each in live if instances.busy(each[0]))
            live = [each for each in live if each[0] != n]
            sig = signal.SIGTERM if r % 2 == 0 else signal.SIGINT
            stopping = asyncio.ensure_future(_stop(old, sig))
            if durable:
                stopped.append(await stopping)
            index = instances.count  # the new one's, 0-based, in start order
            live.append((index, slot, await asyncio.to_thread(instances.start, slot)))
            if not durable:
                stopped.append(await stopping)
        restarted.set()
        async with asyncio.timeout(120):
            await streaming

    assert failures == []
    assert len(sent) >= MESSAGES
    runs, begun = instances.runs(), instances.runs(begun=True)
    assert set(runs) == {m.hex() for m in sent}, "a command acked but never run"  # 0 lost
    assert [m for m, n in begun.items() if n > 1] == []  # 0 run twice, not even begun
    assert runs == begun
    for status, out in stopped:
        assert status == 0, out
        assert "every running handler finished and was acked" in out, out
    # the lifespan hooks ran once per instance, the shutdown ones after the drain
    stopped_ones = sorted(set(range(instances.count)) - {n for n, _, _ in live})
    hooks = instances.hooks()
    assert [hooks[n] for n in stopped_ones] == ["startup\nshutdown\n"] * len(stopped)
    # mid-stream: handlers were running when the signal came (in at least one stop,
    # the others almost always; each stop waited for a running one before its signal)
    assert any("running at the signal: 0," not in out for _, out in stopped), stopped
