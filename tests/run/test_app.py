"""``ackbus.App`` and ``ackbus run``'s settings, in one process (the rolling restart with
real processes is tests/run/test_rolling_restart.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ackbus import App, Context, Endpoint
from ackbus._settings import Settings, SettingsError, add_arguments, settings
from ackbus.app import main
from ackbus.testing.pytest_plugin import ServiceProcess
from helpers import HubBus, eventually
from poker import table_ackbus, table_pb2
from proc_harness import ROOT, free_port

HERE = Path(__file__).resolve().parent


def test_a_flag_beats_the_environment_which_beats_the_app() -> None:
    app = App("table", hubs="tcp://code:1", grace=5, max_concurrency=3)
    assert settings(app.defaults, env={}) == Settings(
        "table", ("tcp://code:1",), grace=5.0, max_concurrency=3
    )
    env = {"ACKBUS_HUBS": "tcp://env:1, tcp://env:2", "ACKBUS_GRACE": "7", "ACKBUS_STORE": "x.db"}
    got = settings(app.defaults, env=env)
    assert (got.hubs, got.grace, got.store) == (("tcp://env:1", "tcp://env:2"), 7.0, "x.db")
    parser = argparse.ArgumentParser()
    add_arguments(parser, target=False)
    flags = parser.parse_args(["--hub", "tcp://flag:1", "--grace", "1", "--service", "t2"])
    got = settings(app.defaults, flags, env)
    assert (got.service, got.hubs, got.grace, got.store) == ("t2", ("tcp://flag:1",), 1.0, "x.db")


@pytest.mark.parametrize(
    ("defaults", "env", "says"),
    [
        ({}, {"ACKBUS_HUBS": "tcp://h:1"}, "no service name: give --service, ACKBUS_SERVICE"),
        ({"service": "t"}, {}, "no hub address: give --hub, ACKBUS_HUBS or App(hubs=)"),
        ({"service": "t"}, {"ACKBUS_HUBS": "x", "ACKBUS_GRACE": "soon"}, "ACKBUS_GRACE='soon'"),
    ],
)
def test_a_missing_or_malformed_setting_says_which(
    defaults: dict[str, str], env: dict[str, str], says: str
) -> None:
    with pytest.raises(SettingsError, match=says.replace("(", r"\(").replace(")", r"\)")):
        settings(defaults, env=env)


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ackbus.cli", "run", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "generated"), **(env or {})},
    )


def test_ackbus_run_says_what_is_wrong_in_one_line() -> None:
    missing = _run("no_such_module:app", "--hub", "tcp://127.0.0.1:1")
    assert missing.returncode == 2
    assert missing.stderr.startswith("ackbus run: error: no module 'no_such_module'")
    not_app = _run("table_app:Table", "--app-dir", str(HERE), "--hub", "tcp://127.0.0.1:1")
    assert not_app.returncode == 2
    assert "table_app:Table is type, not an ackbus.App" in not_app.stderr
    port = free_port()  # nothing listens there
    silent = _run(
        "table_app:app",
        "--app-dir",
        str(HERE),
        env={"ACKBUS_HUBS": f"tcp://127.0.0.1:{port}", "TABLE_APP_LOG": os.devnull},
    )
    assert silent.returncode == 1, silent.stderr
    assert silent.stderr.count("\n") == 1, silent.stderr  # one line, no traceback
    assert "no hub of" in silent.stderr
    assert "answered within" in silent.stderr


def test_ackbus_run_help_lists_the_environment_variables() -> None:
    helped = _run("--help")
    for var in ("ACKBUS_HUBS", "ACKBUS_STORE", "ACKBUS_SERVICE", "ACKBUS_GRACE", "ACKBUS_KEYS"):
        assert var in helped.stdout


def test_the_app_must_be_running_to_have_an_endpoint() -> None:
    with pytest.raises(RuntimeError, match="only while it runs"):
        App("table").endpoint  # noqa: B018


class Gated(table_ackbus.TableHandler):
    """StartHand waits for ``gate``; ``ran`` lists the table ids handled."""

    def __init__(self, gate: asyncio.Event, ran: list[str]) -> None:
        self.gate, self.ran = gate, ran
        self.started = asyncio.Event()

    async def on_start_hand(self, msg: table_pb2.StartHand, ctx: Context) -> None:
        self.started.set()
        await self.gate.wait()
        self.ran.append(msg.table_id)


async def test_drain_finishes_the_running_handler_and_sends_new_work_elsewhere(
    memory_hub: HubBus,
) -> None:
    events: list[str] = []
    gate = asyncio.Event()
    old_runs: list[str] = []
    new_runs: list[str] = []
    old = App("table", backend=memory_hub.backend, heartbeat=0.2)
    new = App("table", backend=memory_hub.backend, heartbeat=0.2)
    old_handler = Gated(gate, old_runs)
    old.register(old_handler)

    @old.lifespan
    async def resources(app: App) -> AsyncIterator[None]:
        events.append("enter")
        app.state.db = "pool"
        yield
        events.append("exit")

    @old.on_startup
    async def startup(app: App) -> None:
        events.append(f"startup {app.state.db} {app.endpoint.identity.service}")

    @old.on_shutdown
    async def shutdown(app: App) -> None:
        events.append(f"shutdown running={app.endpoint.running}")

    @new.on_startup
    async def register_late(app: App) -> None:  # a handler registered from a hook
        app.register(_Immediate(new_runs))

    config = Settings("table", (memory_hub.address,), grace=5.0)
    async with Endpoint("dealer", memory_hub.address, backend=memory_hub.backend) as dealer:
        client = table_ackbus.TableClient(dealer)
        async with old.running(config) as old_ep:
            first = await client.send_start_hand(table_id="t1", wait_ack=False, timeout=10)
            async with asyncio.timeout(5):
                await old_handler.started.wait()
            async with new.running(config):
                draining = asyncio.ensure_future(old_ep.drain(5.0))
                # the hub heard the drain: the old instance is there with no handlers
                await eventually(lambda: _handlers(memory_hub, old_ep) == frozenset())
                second = await client.send_start_hand(table_id="t2", timeout=10)
                assert second, second.error
                assert not draining.done()  # t1 still runs
                gate.set()
                assert await asyncio.wait_for(draining, 5)
                await first.wait(5)
                assert first, first.error
        assert events == ["enter", "startup pool table", "shutdown running=0", "exit"]
    assert old_runs == ["t1"]
    assert new_runs == ["t2"]


def _handlers(bus: HubBus, ep: Endpoint) -> frozenset[str] | None:
    """The command types the hub routes to ``ep`` (None: not registered)."""
    for inst in bus.hub.routing.instances():
        if inst.identity == ep.identity:
            return inst.commands
    return None


class _Immediate(table_ackbus.TableHandler):
    def __init__(self, ran: list[str]) -> None:
        self.ran = ran

    async def on_start_hand(self, msg: table_pb2.StartHand, ctx: Context) -> None:
        self.ran.append(msg.table_id)


def test_python_m_ackbus_run_is_the_same_main() -> None:
    from ackbus import run

    assert run.main is main


SCRIPT = """\
import sys

from ackbus import App

app = App("table")

if __name__ == "__main__":
    sys.exit(app.run())
"""


def test_a_script_runs_its_own_app_with_the_same_flags(ackbus_hub: str, tmp_path: Path) -> None:
    """``app.run()`` in a script's main block: the flags of ``ackbus run`` without the
    target, the same ready line and the same stop."""
    script = tmp_path / "service.py"
    script.write_text(SCRIPT)
    proc = ServiceProcess(
        [sys.executable, str(script), "--hub", ackbus_hub, "--grace", "2", "--service", "lobby"],
        {**os.environ, "PYTHONPATH": str(ROOT / "generated")},
        b" ready on ",
        30.0,
    )
    try:
        assert proc.ready_line.startswith("ackbus run: lobby/")
        status, out = proc.stop(signal.SIGINT)
    finally:
        proc.kill()
    assert status == 0, proc.errors()
    assert "every running handler finished and was acked" in out


async def test_lifespan_takes_a_context_manager_factory_or_a_bare_generator(
    memory_hub: HubBus,
) -> None:
    events: list[str] = []

    async def bare(app: App) -> AsyncIterator[None]:
        events.append("bare in")
        yield
        events.append("bare out")

    @contextlib.asynccontextmanager
    async def managed(app: App) -> AsyncIterator[None]:
        events.append("managed in")
        yield
        events.append("managed out")

    config = Settings("lobby", (memory_hub.address,), grace=1.0)
    for lifespan in (bare, managed):
        app = App(lifespan=lifespan, backend=memory_hub.backend, heartbeat=0.2)
        async with app.running(config) as ep:
            assert ep.identity.service == "lobby"
    assert events == ["bare in", "bare out", "managed in", "managed out"]
