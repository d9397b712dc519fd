"""The runtime's log lines: the structured fields of per-message lines (``extra=``), a
silent hub warned of once a minute however often it is found silent, and ``ackbus hub``
saying "listening" and "registered" once each, as a real process."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import pytest
from ackbus import Context
from ackbus.endpoint import Endpoint
from helpers import FAST, eventually
from poker import table_pb2
from proc_harness import Procs, free_port


async def test_per_message_lines_carry_id_type_service_and_attempt(
    hub: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ackbus")

    async def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        raise RuntimeError("the deck is gone")

    rx = Endpoint("table", hub, policy=FAST)
    rx.register_handler(table_pb2.StartHand, handle)
    async with rx, Endpoint("dealer", hub, policy=FAST) as tx:
        report = await tx.send(table_pb2.StartHand(table_id="t1"))
    assert not report
    fields = ("message_id", "message_type", "service", "attempt")
    raised = [r for r in caplog.records if "raised on" in r.getMessage()]
    failed = [r for r in caplog.records if r.getMessage().startswith("delivery failed")]
    assert len(raised) == 1
    assert len(failed) == 1
    mid = report.message_id.hex()
    assert tuple(getattr(raised[0], f) for f in fields) == (mid, "poker.StartHand", "table", 1)
    assert tuple(getattr(failed[0], f) for f in fields) == (mid, "poker.StartHand", "dealer", 1)
    # A format naming the fields renders such a line.
    line = logging.Formatter("%(service)s %(message_type)s %(message_id)s #%(attempt)s")
    assert line.format(failed[0]) == f"dealer poker.StartHand {mid} #1"


async def test_a_hub_found_silent_again_and_again_is_one_warning_a_minute(
    procs: Procs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ackbus.endpoint")
    port = free_port()
    hub = procs.hub(port)
    ep = Endpoint("dealer", f"tcp://127.0.0.1:{port}", heartbeat=0.1, misses=2)
    silences: list[float] = []
    say = ep.hub_silent

    def counted(index: int, silence: float) -> None:  # the protocol calls the endpoint's
        silences.append(silence)
        say(index, silence)

    ep.hub_silent = counted  # type: ignore[method-assign]
    async with ep:
        hub.send_signal(signal.SIGSTOP)  # the hub's process frozen: no heartbeat comes
        try:
            await eventually(lambda: len(silences) >= 3, timeout=20)
        finally:
            hub.send_signal(signal.SIGCONT)
    lines = [r.getMessage() for r in caplog.records if " silent for " in r.getMessage()]
    assert len(lines) == 1, lines


@pytest.mark.slow
async def test_ackbus_hub_says_listening_and_registered_once(procs: Procs, tmp_path: Path) -> None:
    port = free_port()
    err = tmp_path / "hub.err"
    hub = procs.start(
        "-m",
        "ackbus.cli",
        "hub",
        "--bind",
        f"tcp://127.0.0.1:{port}",
        "--log-level",
        "info",
        ready=b"listening on",
        stderr=err,
    )

    async def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        return None

    rx = Endpoint("table", f"tcp://127.0.0.1:{port}", policy=FAST)
    rx.register_handler(table_pb2.StartHand, handle)
    async with rx, Endpoint("dealer", f"tcp://127.0.0.1:{port}", policy=FAST) as tx:
        assert await tx.send(table_pb2.StartHand(table_id="t1"))
        # A HELLO said again unchanged (as on a reconnect) writes no second line.
        tx._proto.connected(0, asyncio.get_running_loop().time())
        assert await tx.send(table_pb2.StartHand(table_id="t2"))
    await eventually(lambda: "left" in err.read_text(), timeout=10)
    hub.send_signal(signal.SIGTERM)
    await asyncio.to_thread(hub.wait, 10)
    assert hub.stdout is not None
    rest = hub.stdout.read()  # after the ready line, which said "listening on"
    assert b"listening on" not in rest
    text = err.read_text()
    registered = [line for line in text.splitlines() if "registered " in line]
    assert sorted(line.split("registered ")[1].split("/")[0] for line in registered) == [
        "dealer",
        "table",
    ]
    assert "listening on" not in text  # said once, on standard output (the ready line)
