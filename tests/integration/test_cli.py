"""The ``ackbus hub`` command runs a hub that endpoints can use, and stops on SIGTERM;
an address it cannot bind is one line on stderr and exit code 1, not a traceback."""

from __future__ import annotations

import signal
import sys

import zmq
from helpers import routes_a_command
from proc_harness import Procs, free_port, run_hub


async def test_ackbus_hub_command_routes_and_stops_on_sigterm(procs: Procs) -> None:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    hub = procs.start(
        "-c",
        "import sys; from ackbus.cli import main; sys.exit(main())",
        "hub",
        "--bind",
        address,
        ready=b"listening on " + address.encode(),
    )
    await routes_a_command(address, "via the cli hub", timeout=5)
    hub.send_signal(signal.SIGTERM)
    assert hub.wait(5) == 0, sys.executable


def test_hub_on_a_port_in_use_prints_one_line_and_exits_1() -> None:
    ctx = zmq.Context()
    other = ctx.socket(zmq.ROUTER)  # another process's hub, as far as the bind can tell
    try:
        port = other.bind_to_random_port("tcp://127.0.0.1")
        busy = f"tcp://127.0.0.1:{port}"
        done = run_hub("--bind", "tcp://127.0.0.1:0", "--bind", busy)
    finally:
        other.close(0)
        ctx.term()
    assert done.returncode == 1
    assert done.stdout == ""  # never said "listening"
    assert done.stderr.splitlines() == [
        f"ackbus hub: error: cannot bind {busy}: address already in use; another process "
        f"(or another socket in this one) is listening on {busy}: stop it, or bind another "
        "port (tcp://127.0.0.1:0 picks a free one)"
    ]


def test_hub_with_a_malformed_address_prints_one_line_and_exits_1() -> None:
    done = run_hub("--bind", "tcp://127.0.0.1")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "ackbus hub: error: cannot bind tcp://127.0.0.1: invalid argument; "
        "the port is missing: use tcp://HOST:PORT"
    ]
