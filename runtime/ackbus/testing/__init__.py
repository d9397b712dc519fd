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
:func:`run_twice`, or :func:`assert_idempotent`; to check that a whole flow ran each
message once, :meth:`TestBus.assert_exactly_once`. :meth:`TestBus.kill` crashes an
instance and :meth:`TestBus.restart_hub` restarts the hub; :func:`run_virtual` runs a
test on a virtual clock. The pytest plugin (:mod:`ackbus.testing.pytest_plugin`) gives
all of it as fixtures (docs/testing.md).
"""

from __future__ import annotations

import asyncio
import os
import random
import selectors
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

from .._report import DeliveryReport
from .._types import Context, Identity
from ..endpoint import Endpoint
from ..hub import Hub
from ..transport import MemoryBackend, TransportOptions
from ..transport._base import OnConnection, OnReceive, OnUnroutable
from ..transport._memory import MemoryLink, MemoryListener
from ..wire import ACK_FRAME, MESSAGE_FRAME, Multipart

__all__ = [
    "Faults",
    "TestBus",
    "VirtualClockLoop",
    "assert_idempotent",
    "run_twice",
    "run_virtual",
]

_DATA = (MESSAGE_FRAME, ACK_FRAME)

M = TypeVar("M", bound=Message)
R = TypeVar("R")


@dataclass
class Faults:
    """What the bus does to each MESSAGE and ACK multipart (a batch of messages or
    acks) on its way into the hub (``to_hub``, on by default) and on its way from the
    hub to the endpoints (``from_hub``, off by default). Rates are 0 to 1. Control
    traffic is spared, so faults test delivery, not liveness.

    Change them at any time; counters say what was done.
    """

    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    """Probability of holding a multipart back for up to ``max_delay`` seconds, which
    also reorders it behind later ones."""
    max_delay: float = 0.05
    reorder: float = 0.0
    """Probability of holding a multipart back until the next one in its direction
    has gone (or ``max_delay`` passed): a swap with its successor."""
    to_hub: bool = True
    """Apply the faults to what endpoints send the hub."""
    from_hub: bool = False
    """Apply the faults to what the hub sends endpoints too."""
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0
    reordered: int = 0


class _Direction:
    """Faults applied to one direction's deliveries (into the hub, or into one link)."""

    def __init__(
        self,
        faults: Faults,
        rng: random.Random,
        deliver: OnReceive,
        applies: Callable[[], bool],
        command: int,
    ) -> None:
        self._command = command
        """The index of the command frame: 1 into the hub (after the peer id), else 0."""
        self._faults = faults
        self._rng = rng
        self._deliver = deliver
        self._applies = applies
        self._held: list[Multipart] = []
        self._release: asyncio.TimerHandle | None = None

    def __call__(self, multiparts: list[Multipart]) -> None:
        faults, rng = self._faults, self._rng
        if not self._applies():
            self._pass(multiparts)
            return
        loop = asyncio.get_running_loop()
        passed: list[Multipart] = []
        for mp in multiparts:
            if len(mp) <= self._command or mp[self._command] not in _DATA:
                passed.append(mp)  # control traffic (hello, heartbeats) is spared
                continue
            if rng.random() < faults.drop:
                faults.dropped += 1
                continue
            if rng.random() < faults.delay:
                faults.delayed += 1
                loop.call_later(rng.random() * faults.max_delay, self._deliver, [mp])
                continue
            if rng.random() < faults.reorder:
                faults.reordered += 1
                self._held.append(mp)  # goes right after the next one
                if self._release is None:
                    self._release = loop.call_later(faults.max_delay, self._flush)
                continue
            passed.append(mp)
            if rng.random() < faults.duplicate:
                faults.duplicated += 1
                passed.append(mp)
        self._pass(passed)

    def _pass(self, multiparts: list[Multipart]) -> None:
        if self._held and any(
            len(mp) > self._command and mp[self._command] in _DATA for mp in multiparts
        ):
            multiparts = multiparts + self._held
            self._held = []
        if multiparts:
            self._deliver(multiparts)

    def _flush(self) -> None:
        self._release = None
        held, self._held = self._held, []
        if held:
            self._deliver(held)


class _FaultyBackend(MemoryBackend):
    """The in-memory transport, with faults applied to what a listener receives
    (into the hub) and, with ``Faults.from_hub``, to what links receive."""

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
        faults = self._faults
        faulty = _Direction(faults, self._rng, on_receive, lambda: faults.to_hub, 1)
        return super().bind(
            addresses, on_receive=faulty, on_unroutable=on_unroutable, options=options
        )

    def connect(
        self,
        address: str,
        *,
        on_receive: OnReceive,
        on_connection: OnConnection | None = None,
        options: TransportOptions = TransportOptions(),  # noqa: B008 (frozen)
    ) -> MemoryLink:
        faults = self._faults
        faulty = _Direction(faults, self._rng, on_receive, lambda: faults.from_hub, 0)
        return super().connect(
            address, on_receive=faulty, on_connection=on_connection, options=options
        )


class TestBus:
    """A hub and any number of endpoints in memory, with seeded fault injection.

    Create endpoints with :meth:`endpoint`, register handlers on them, then
    :meth:`start` (or use ``async with``, which starts on entry what was created
    before and closes everything on exit).

    :attr:`runs` counts the handler runs begun on the bus's endpoints, per service and
    message id (handlers registered before the endpoint's start);
    :meth:`assert_exactly_once` checks a flow against it. :meth:`kill` crashes an
    endpoint, :meth:`restart_hub` restarts the hub.
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
        self.runs: Counter[tuple[str, bytes]] = Counter()
        """Handler runs begun, per (service, message id): a run cut short by a crash
        counts too."""
        self._runs_lock = threading.Lock()  # plain def handlers count from their threads
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
            if not ep.closed:
                self._count_runs(ep)
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

    # ------------------------------------------------------------------ faults

    async def kill(self, ep: Endpoint) -> None:
        """Crash ``ep`` as ``kill -9`` would: no BYE, its running handlers cancelled and
        never acked, its memory (dedupe, pending sends) gone; a durable store keeps what
        it committed. The hub notices by the missed heartbeats. Create a new endpoint
        (with ``instance=ep.identity.instance`` and the same ``store=`` for a restart
        of the same instance) and :meth:`start` it to bring it back."""
        loop = asyncio.get_running_loop()
        for hub in range(ep._proto.hubs):
            ep._proto.connected(hub, loop.time(), up=False)  # unwelcomed: no BYE
        await ep.close(timeout=0)

    async def restart_hub(self, down: float = 0.0) -> Hub:
        """Stop the hub as a crash would (its routing table lost, no goodbye), wait
        ``down`` seconds, and start a new one on the same address; the endpoints
        reconnect and register again. The new hub has the default grace period, so a
        retry of a message some instance may have run waits until the instances are
        back, as with ``ackbus hub``. Returns the new hub."""
        await self.hub.close()
        if down > 0:
            await asyncio.sleep(down)
        self.hub = Hub(self.hub_address, backend=self._backend, heartbeat=self._heartbeat)
        await self.hub.start()
        return self.hub

    # ------------------------------------------------------------------ checks

    def assert_exactly_once(self, reports: Iterable[DeliveryReport]) -> None:
        """Every report acked, by services whose handler ran its message once each, and
        no handler on this bus begun twice for one message id. AssertionError listing
        up to 20 problems otherwise."""
        problems: list[str] = []
        for r in reports:
            what = f"{r.message_type} {r.message_id.hex()}"
            if not r:
                problems.append(f"{what}: not acked ({r.status.value}: {r.error})")
                continue
            services = {i.service for i in r.acked_by}
            for service in sorted(services):
                n = self.runs[(service, r.message_id)]
                if n != 1:
                    problems.append(f"{what}: acked by {service}, whose handler ran {n} times")
            if not services and not any(m == r.message_id for _, m in self.runs):
                problems.append(f"{what}: acked, but no handler on this bus ran it")
        for (service, msg_id), n in sorted(self.runs.items()):
            if n > 1:
                problems.append(f"{msg_id.hex()}: the handler of {service} ran {n} times")
        if problems:
            shown = "\n  ".join(dict.fromkeys(problems[:20]))
            raise AssertionError(f"not exactly once ({len(problems)} problems):\n  {shown}")

    def _count_runs(self, ep: Endpoint) -> None:
        """Wrap ``ep``'s handlers so that each run begun counts in :attr:`runs`."""
        service = ep.identity.service
        routes = ep._dispatch._routes
        for msg_type, route in list(routes.items()):
            if getattr(route.fn, "_ackbus_counted", False):
                continue
            routes[msg_type] = replace(route, fn=self._counted(service, route.fn, route.sync))

    def _counted(self, service: str, fn: Callable[..., Any], sync: bool) -> Callable[..., Any]:
        runs, lock = self.runs, self._runs_lock
        wrapper: Any
        if sync:

            def wrapper(msg: Any, ctx: Context) -> Any:
                with lock:
                    runs[(service, ctx.message_id)] += 1
                return fn(msg, ctx)

        else:

            async def wrapper(msg: Any, ctx: Context) -> Any:
                with lock:
                    runs[(service, ctx.message_id)] += 1
                return await fn(msg, ctx)

        wrapper._ackbus_counted = True
        return wrapper  # type: ignore[no-any-return]


async def run_twice(
    handler: Callable[[M, Context], Coroutine[Any, Any, R]],
    msg: M,
    *,
    sender: str = "test",
) -> tuple[R, R]:
    """Run ``handler(msg, ctx)`` twice with the same message id, as a redelivery after
    a crash would, and return both results: assert on your side effects that the
    second run changed nothing."""
    ctx = _first_delivery(msg, sender)
    first = await handler(msg, ctx)
    second = await handler(msg, replace(ctx, attempt=2))
    return first, second


def _first_delivery(msg: Message, sender: str) -> Context:
    """The context of a first delivery of ``msg`` from ``sender``, with a fresh id (a
    redelivery is ``replace(ctx, attempt=2)``)."""
    now = time.time()
    return Context(
        message_id=os.urandom(16),
        message_type=msg.DESCRIPTOR.full_name,
        sender=Identity(sender, "test-instance"),
        attempt=1,
        created_at=now,
        sent_at=now,
        received_at=now,
    )


async def assert_idempotent(
    handler: Callable[[M, Context], Coroutine[Any, Any, Any]],
    msg: M,
    observe: Callable[[], Any] | Callable[[], Awaitable[Any]],
) -> None:
    """Prove ``handler`` safe to run twice for one message: run it once, take
    ``observe()`` (a snapshot of its effects: rows, a dict's copy; it may be async),
    run it again with the same message id (attempt 2, as a redelivery after a crash
    would), and take ``observe()`` again. AssertionError if the second run changed what
    was observed, showing both."""
    snapshots: list[Any] = []

    async def look() -> None:
        seen = observe()
        if isinstance(seen, Awaitable):
            seen = await seen
        snapshots.append(seen)

    ctx = _first_delivery(msg, "test")
    await handler(msg, ctx)
    await look()
    await handler(msg, replace(ctx, attempt=2))
    await look()
    first, second = snapshots
    if first != second:
        raise AssertionError(
            f"not idempotent: a second run of {getattr(handler, '__qualname__', handler)} "
            f"for one message changed the effects\n  after one run:  {first!r}\n"
            f"  after two runs: {second!r}"
        )


class _JumpingSelector(selectors.BaseSelector):
    """A real selector that, when nothing is ready and the loop would sleep until its
    next timer, moves the loop's virtual clock there instead."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: wait for real I/O (a thread's result)
            return self._real.select(None)
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to its next timer whenever nothing is ready: a
    test of retries, heartbeats and timeouts runs in the time its code takes, not the
    seconds it simulates. For async code on the in-memory transport (a
    :class:`TestBus`): real sockets, plain ``def`` handlers (threads) and
    ``time.monotonic()`` keep real time, and a thread still working when the loop has
    a timer due sees the clock jump past it. Use it through :func:`run_virtual`."""

    def __init__(self) -> None:
        self._virtual = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._virtual

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the selector does, when the loop would sleep)."""
        self._virtual += seconds


def run_virtual(main: Coroutine[Any, Any, R]) -> R:
    """Run ``main`` to its end on a :class:`VirtualClockLoop`, as ``asyncio.run``
    does, and return its result: ``result = run_virtual(scenario())`` in a plain
    (not async) test."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main)
