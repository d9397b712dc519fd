"""What the runtime's tests share: the quick policy, an embedded hub, waiting helpers.

A test that needs other timings says so where it uses them, e.g.
``FAST.with_(deadline=8.0)``, so that the difference is visible in the test.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ackbus import DeliveryReport, Policy, Registry
from ackbus.hub import Hub
from ackbus.transport import Backend, DefaultBackend, MemoryBackend, ZmqBackend

FAST = Policy(ack_timeout=0.2, backoff_base=0.01, backoff_cap=0.05, deadline=3.0)
"""Quick retries and a short deadline: a lost message shows within a test's time."""

HEARTBEAT = 0.2
"""The heartbeat of the embedded hubs (and of the endpoints that pass it)."""

TRANSPORTS = ("memory", "tcp", "ipc", "mixed")
"""What :func:`running_hub` can listen on."""


@dataclass
class HubBus:
    """A running embedded hub and the backend its endpoints connect with."""

    hub: Hub
    backend: Backend

    @property
    def address(self) -> str:
        """The hub's first address (a port 0 resolved)."""
        return self.hub.addresses[0]


@asynccontextmanager
async def running_hub(
    transport: str = "tcp", tmp_path: Path | None = None, **options: Any
) -> AsyncIterator[HubBus]:
    """An embedded hub, started, with a heartbeat of :data:`HEARTBEAT` unless
    ``options`` say otherwise; closed on exit.

    *memory* listens on ``inmem://hub``, *tcp* on a free TCP port, *ipc* on a socket
    in ``tmp_path``, and *mixed* on both ``inmem://hub`` and a free TCP port (in that
    order) through the default backend.
    """
    backend: Backend
    if transport == "memory":
        backend, addresses = MemoryBackend(), ["inmem://hub"]
    elif transport == "tcp":
        backend, addresses = ZmqBackend(), ["tcp://127.0.0.1:0"]
    elif transport == "ipc":
        if tmp_path is None:
            raise ValueError("an ipc hub needs tmp_path for its socket")
        backend, addresses = ZmqBackend(), [f"ipc://{tmp_path}/hub.sock"]
    elif transport == "mixed":
        backend = DefaultBackend(local=MemoryBackend())
        addresses = ["inmem://hub", "tcp://127.0.0.1:0"]
    else:
        raise ValueError(f"unknown transport {transport!r}; one of {TRANSPORTS}")
    options.setdefault("heartbeat", HEARTBEAT)
    async with Hub(addresses, backend=backend, **options) as hub:
        yield HubBus(hub, backend)


async def eventually(cond: Callable[[], bool], timeout: float = 5.0, every: float = 0.002) -> None:
    """Poll ``cond`` every ``every`` s until true; TimeoutError after ``timeout`` s. For
    states that no event announces (a descriptor count, a callback list, a log file)."""
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 (nothing to wait on but time)
            await asyncio.sleep(every)


async def settle(reports: Iterable[DeliveryReport], timeout: float = 5.0) -> None:
    """Wait until every report is settled (acked or failed); TimeoutError if they are
    not all settled within ``timeout`` s in total."""
    async with asyncio.timeout(timeout):
        for r in reports:
            await r.wait(timeout)


def run_time_subscribers(registry: Registry) -> Registry:
    """``registry`` with no declared event subscribers: for tests whose subscribers stand
    in for none of the schema's (a publish then waits for whoever the hub routes it to)."""
    out = Registry()
    for spec in registry:
        policy = spec.policy.with_(subscribers=(), subscriber_policies=())
        out.add(dataclasses.replace(spec, policy=policy))
    return out


async def routes_a_command(
    address: str, reason: str = "still here", timeout: float = 10, connect_timeout: float = 5
) -> None:
    """A receiver and a sender through the hub at ``address``: one command, acked and
    handled once (the hub serves real traffic)."""
    from ackbus import Context
    from ackbus.endpoint import Endpoint
    from ackbus.wire_pb2 import Bye

    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)

    receiver = Endpoint("table", address, connect_timeout=connect_timeout)
    receiver.register_handler(Bye, on_bye)
    async with receiver, Endpoint("dealer", address, connect_timeout=connect_timeout) as sender:
        report = await sender.send(Bye(reason=reason), timeout=timeout)
        assert report, report.error
    assert got == [reason]


async def say_hello(
    sock: Any,
    service: str,
    instance: str,
    commands: tuple[str, ...] = (),
    events: tuple[str, ...] = (),
    timeout: float = 2.0,
) -> list[bytes] | None:
    """A raw ``zmq.asyncio`` DEALER says HELLO as ``service/instance``: the hub's answer
    (its WELCOME or REFUSAL multipart), None if neither came within ``timeout``."""
    from ackbus.wire import Command, decode_command, encode_hello
    from ackbus.wire_pb2 import Hello

    msg = Hello(versions=[1], heartbeat_ms=60_000, commands=commands, events=events)
    msg.identity.service = service
    msg.identity.instance = instance
    try:
        async with asyncio.timeout(timeout):
            await sock.send_multipart(encode_hello(msg))
            while True:
                frames = await sock.recv_multipart()
                if decode_command(frames) in (Command.WELCOME, Command.REFUSAL):
                    return list(frames)
    except TimeoutError:
        return None


ACCESS_EXAMPLE = """\
# who may do what
[clients.orders]
services = ["orders"]
send = ["orders.*", "billing.Charge"]

[clients.table]
services = ["table", "table-canary"]
handles = ["poker.*"]

[clients.audit]
services = ["audit"]
send = []
"""
"""An access file (docs/security.md) for the tests of the access rules."""


def write_access(folder: Path, text: str = ACCESS_EXAMPLE) -> Path:
    """``text`` as ``folder/access.toml``."""
    path = folder / "access.toml"
    path.write_text(text)
    return path


async def each_event_handled_once(audit: Path, lobby: Path, n: int, timeout: float) -> None:
    """The services.py subscribers' logs (``audit``, ``lobby``) reach ``n`` HandStarted
    events within ``timeout`` s, the same ones, each handled once by each; then 2 s more
    so that their acks of the last ones reach the publishers."""
    from proc_harness import type_runs

    def events(log: Path) -> Counter[str]:
        return type_runs(log, "poker.HandStarted")

    await eventually(
        lambda: len(events(audit)) >= n and len(events(lobby)) >= n, timeout, every=0.2
    )
    await asyncio.sleep(2)
    got_audit, got_lobby = events(audit), events(lobby)
    assert set(got_audit) == set(got_lobby), "the subscribers saw different events"
    assert len(got_audit) == n, f"{len(got_audit)} events for {n} hands"
    assert max(got_audit.values()) == 1, "audit handled an event twice"
    assert max(got_lobby.values()) == 1, "lobby handled an event twice"


async def byes_handled(server: Any, client: Any, reasons: Iterable[str]) -> list[str]:
    """Each of ``reasons`` sent from ``client`` to ``server`` (endpoints, not yet
    entered) as an ``ackbus.Bye`` command, one at a time, each acked; the reasons the
    server's handler got, in order."""
    from ackbus import Context
    from ackbus.wire_pb2 import Bye

    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)

    server.register_handler(Bye, on_bye)  # before its first HELLO: no NO_ROUTE retry
    async with server, client:
        await server.start()
        for reason in reasons:
            report = await client.send(Bye(reason=reason), timeout=10)
            report.raise_for_status()
    return got
