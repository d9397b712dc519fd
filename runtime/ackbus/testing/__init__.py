"""Test your handlers without a network: an in-memory bus that can misbehave on purpose.

:class:`TestBus` runs a real :class:`~ackbus.hub.Hub` and real endpoints over the
in-memory transport, so a test exercises exactly the code that runs in production:
acks after the handler, retries, dedupe, routing, request/reply. Its
:class:`Faults` drop, duplicate and delay message and ack batches on their way into
the hub, drawn from a seeded generator (timers still run on the event loop's clock, so
a run is not replayed step by step; the sans-IO simulation in
:mod:`ackbus.testing.simulate` is the deterministic one)::

    async with TestBus(seed=7) as bus:
        table = bus.endpoint("table")
        table.register(MyTable())
        dealer = bus.endpoint("dealer")
        await bus.start()
        bus.faults.drop = 0.3                       # lose 30% of messages and acks
        report = await TableClient(dealer).send_start_hand(table_id="t1", timeout=5)
        assert report                               # retried until acked

The bus deduplicates like production, so a dropped ack never runs a handler twice. To
check that a handler itself tolerates a second run (what happens when an instance dies
after its handler ran but before its ack left), call it twice with
:func:`run_twice`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from google.protobuf.message import Message

from .._types import Context, Identity
from ..endpoint import Endpoint
from ..hub import Hub
from ..transport import MemoryBackend, TransportOptions
from ..transport._base import OnReceive, OnUnroutable
from ..transport._memory import MemoryListener
from ..wire import ACK_FRAME, MESSAGE_FRAME, Multipart

__all__ = ["Faults", "TestBus", "run_twice"]

_DATA = (MESSAGE_FRAME, ACK_FRAME)

M = TypeVar("M", bound=Message)
R = TypeVar("R")


@dataclass
class Faults:
    """What the bus does to each MESSAGE and ACK multipart (a batch of messages or
    acks) on its way into the hub. Rates are 0 to 1. Control traffic is spared, so
    faults test delivery, not liveness.

    Change them at any time; counters say what was done.
    """

    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    """Probability of holding a multipart back for up to ``max_delay`` seconds, which
    also reorders it behind later ones."""
    max_delay: float = 0.05
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0


class _FaultyBackend(MemoryBackend):
    """The in-memory transport, with faults applied to what a listener receives."""

    __test__ = False

    def __init__(self, faults: Faults, rng: random.Random) -> None:
        super().__init__()
        self._faults = faults
        self._rng = rng

    def bind(
        self,
        addresses: str | list[str] | tuple[str, ...],
        *,
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None = None,
        options: TransportOptions = TransportOptions(),  # noqa: B008 (frozen)
    ) -> MemoryListener:
        loop = asyncio.get_running_loop()
        faults, rng = self._faults, self._rng

        def faulty(multiparts: list[Multipart]) -> None:
            passed: list[Multipart] = []
            for mp in multiparts:
                if len(mp) < 2 or mp[1] not in _DATA:
                    passed.append(mp)  # control traffic (hello, heartbeats) is spared
                    continue
                if rng.random() < faults.drop:
                    faults.dropped += 1
                    continue
                if rng.random() < faults.delay:
                    faults.delayed += 1
                    loop.call_later(rng.random() * faults.max_delay, on_receive, [mp])
                    continue
                passed.append(mp)
                if rng.random() < faults.duplicate:
                    faults.duplicated += 1
                    passed.append(mp)
            if passed:
                on_receive(passed)

        return super().bind(
            addresses, on_receive=faulty, on_unroutable=on_unroutable, options=options
        )


class TestBus:
    """A hub and any number of endpoints in memory, with seeded fault injection.

    Create endpoints with :meth:`endpoint`, register handlers on them, then
    :meth:`start` (or use ``async with``, which starts on entry what was created
    before and closes everything on exit).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, *, seed: int = 0, heartbeat: float = 0.2) -> None:
        self.seed = seed
        self.faults = Faults()
        self._backend = _FaultyBackend(self.faults, random.Random(seed))
        self._heartbeat = heartbeat
        self.hub_address = f"inmem://testbus-{os.getpid()}-{id(self)}"
        self.hub = Hub(
            self.hub_address,
            backend=self._backend,
            heartbeat=heartbeat,
            grace=0.0,
        )
        self._endpoints: list[Endpoint] = []
        self._started = False

    def endpoint(self, service: str, **options: Any) -> Endpoint:
        """A new endpoint on this bus (started by :meth:`start`). Options as for
        :class:`~ackbus.endpoint.Endpoint`; ``seed`` defaults to the bus's."""
        options.setdefault("heartbeat", self._heartbeat)
        options.setdefault("seed", self.seed + len(self._endpoints))
        ep = Endpoint(service, self.hub_address, backend=self._backend, **options)
        self._endpoints.append(ep)
        return ep

    async def start(self) -> TestBus:
        """Start the hub and every endpoint not started yet."""
        if not self._started:
            await self.hub.start()
            self._started = True
        for ep in self._endpoints:
            await ep.start()
        return self

    async def close(self) -> None:
        for ep in self._endpoints:
            await ep.close()
        await self.hub.close()

    async def __aenter__(self) -> TestBus:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def run_twice(
    handler: Callable[[M, Context], Coroutine[Any, Any, R]],
    msg: M,
    *,
    sender: str = "test",
) -> tuple[R, R]:
    """Run ``handler(msg, ctx)`` twice with the same message id, as a redelivery after
    a crash would, and return both results: assert on your side effects that the
    second run changed nothing."""
    now = time.time()
    ctx = Context(
        message_id=os.urandom(16),
        message_type=msg.DESCRIPTOR.full_name,
        sender=Identity(sender, "test-instance"),
        attempt=1,
        created_at=now,
        sent_at=now,
        received_at=now,
    )
    first = await handler(msg, ctx)
    second = await handler(msg, replace(ctx, attempt=2))
    return first, second
