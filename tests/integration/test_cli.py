"""The ``ackbus hub`` command runs a hub that endpoints can use, and stops on SIGTERM."""

from __future__ import annotations

import signal
import sys

from ackbus import Context
from ackbus.endpoint import Endpoint
from ackbus.wire_pb2 import Bye
from proc_harness import Procs, free_port


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
    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)

    receiver = Endpoint("table", address)
    receiver.register_handler(Bye, on_bye)
    async with receiver, Endpoint("dealer", address) as sender:
        assert await sender.send(Bye(reason="via the cli hub"), timeout=5)
    assert got == ["via the cli hub"]
    hub.send_signal(signal.SIGTERM)
    assert hub.wait(5) == 0, sys.executable
