"""The actors of the simulation: endpoints and a hub over ``simnet``, driving the runtime's
own protocols.

Each :class:`SimEndpoint` is an :class:`~ackbus.core.endpoint_protocol.EndpointProtocol`
and :class:`SimHub` a :class:`~ackbus.core.hub_protocol.HubProtocol`: the very classes the
asyncio :class:`~ackbus.Endpoint` and :class:`~ackbus.Hub` drive. These drivers only carry
the protocols' actions over a :class:`~ackbus.testing.simnet.SimNetwork` as small value
objects (where the runtime encodes them with ``ackbus.wire``), run simulated handlers, and
record in a :class:`Ledger` the ground truth the checks in :mod:`ackbus.testing.simulate`
need: which instance incarnation ran which message, and why a hub routed a retry somewhere
new.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from ..core import Completion, Instance, Outcome, RemoteError
from ..core._values import Identity
from ..core.endpoint_protocol import AckReply, EndpointProtocol, InboundItem
from ..core.hub_protocol import KIND_EVENT, NOT_REGISTERED, HubProtocol
from ..errors import DeliveryError, RemoteProtocolError, RetryLater
from .simdurable import DEDUPE_TTL, SimDurable
from .simledger import Ledger, Planned
from .simnet import SimNetwork
from .simstore import SimStore

__all__ = [
    "COMMANDS",
    "EVENTS",
    "HUB",
    "SERVICES",
    "Ledger",
    "Planned",
    "SimEndpoint",
    "SimHub",
]

HUB = "hub"
HUB_IDENTITY = Identity("hub", "sim")
SERVICES = {"alpha": 3, "beta": 2, "gamma": 1}
COMMANDS = {"alpha": ["alpha.Do", "shared.Cmd"], "beta": ["beta.Do", "shared.Cmd"], "gamma": []}
EVENTS = {"alpha": ["ev.Tick"], "beta": ["ev.Tick"], "gamma": ["ev.Tick"]}
SUBSCRIBERS = {
    event: sorted(s for s, types in EVENTS.items() if event in types)
    for types in EVENTS.values()
    for event in types
}
"""Event type → the services that subscribe to it (what a schema says)."""
HUB_HEARTBEAT = 0.3
HUB_GRACE = 2.0
HELLO_RETRY = 0.2
AT_ONCE = 0.3
"""Share of handler runs that return at once (acked with their batch)."""
LONG = 0.1
"""Share of the other runs that are long: 0.5 to 3 s, beyond the senders' ack timeout, so
that they hold their lease with IN_PROGRESS notices."""
HUB_STALL_LIMIT = 4.0
"""The simulated hub forgets a stalled instance after 4 s of silence (the runtime's 60 s
would outlast every drawn stall): stalls of 0.3 to 6 s cross it both ways."""
THAW = 0.001
"""A stalled node's timer runs first when it thaws, then what arrived meanwhile (the
harsher order for its view of the hub's liveness)."""


from .simwire import (  # noqa: E402 - the values on the wire, after the constants
    AckGroup,
    Heartbeat,
    Hello,
    Item,
    Items,
    Refusal,
    Routed,
    Run,
    Welcome,
    _identity,
    _token,
)

# -- the endpoint driver --------------------------------------------------------------------


class SimEndpoint:
    """One endpoint (a service instance, or a sender that handles nothing): an
    :class:`EndpointProtocol` whose actions travel over the simulated network. A crash
    loses it whole; a restart starts a new one (as a process would)."""

    def __init__(
        self,
        addr: str,
        identity: Identity,
        net: SimNetwork,
        ledger: Ledger,
        rng: random.Random,
        *,
        commands: Sequence[str] = (),
        events: Sequence[str] = (),
        implements: Sequence[str] = (),
        window: int = 1000,
        durable: bool = False,
        max_concurrency: int = 1000,
    ) -> None:
        self.addr = addr
        self.identity = identity
        self.net = net
        self.ledger = ledger
        self.rng = rng
        self.commands = tuple(commands)
        self.events = tuple(events)
        self.implements = tuple(implements)
        self.window = window
        self.max_concurrency = max_concurrency
        self.active = 0
        """Handlers of this incarnation running now (ground truth, memory mode)."""
        self.keys_running: set[int] = set()
        """Ordering keys of the handlers running now (ground truth, memory mode)."""
        self.up = True
        self.incarnation = 0
        self.heartbeat = rng.choice((0.2, 0.3, 0.5))
        self.fail_rate = 0.0
        self.planned: dict[bytes, Planned] = {}
        self.results: dict[bytes, Completion] = {}
        self._out: list[Item] = []
        self.store: SimStore | None = None
        """Durable mode: the node's store, whose rows survive its crashes."""
        self.durable: SimDurable | None = None
        """Durable mode: the glue of the current incarnation."""
        self.accepted: set[bytes] = set()
        """Durable mode: ids of the messages whose outbox row reached the disk."""
        self.resumed = 0
        """Durable mode: messages resumed from the outbox by a restart."""
        self.frozen_until = 0.0
        """A stalled node (its loop held, its connection up) runs nothing before this."""
        self._held: list[tuple[str, object]] = []
        """What arrived while stalled, waiting unread in its socket."""
        self._committing: dict[bytes, Item] = {}
        """Durable mode: the items whose handler returned OK, by id (for the ledger when
        their inbox record commits)."""
        if durable:
            self.store = SimStore(
                net,
                random.Random(rng.random()),
                latency=rng.choice((0.002, 0.01, 0.05)),
                location=addr,
            )
            self.store.observe = self._committed
        self._start(0.0)

    def _start(self, now: float) -> None:
        self.proto = EndpointProtocol(
            self.identity,
            self,
            window=self.window,
            heartbeat=self.heartbeat,
            misses=3,
            dedupe_capacity=10_000,
            dedupe_ttl=DEDUPE_TTL,
            seed=self.rng.getrandbits(32),
            hello_retry=HELLO_RETRY,
            max_concurrency=self.max_concurrency,
        )
        self.active = 0
        self.keys_running = set()
        if self.store is not None:  # as Endpoint.start: the store first, then the hub
            self.durable = SimDurable(self, self.store, self._flush)
        self.proto.set_types(self.commands, self.events, now, self.implements)
        self.proto.connected(self.proto.add_hub(), now)  # one HELLO, with the types

    # -- the node's life --------------------------------------------------------------

    def crash(self, now: float) -> None:
        if self.store is not None:
            self.store.crash()
        self.up = False
        self.incarnation += 1
        self.frozen_until = 0.0
        self._held = []

    def stall(self, now: float, until: float) -> None:
        """Freeze the node's loop until ``until`` (an async handler that blocks): it
        sends nothing, its timers and handlers wait, what arrives stays unread; its
        connection stays up (the hub's ``connected`` says so)."""
        if not self.up or until <= self.frozen_until:
            return
        self.ledger.stalls["stalled receivers"] += 1
        self.frozen_until = until
        incarnation = self.incarnation
        self.net.call_at(until + THAW, lambda at: self._thaw(at, incarnation))

    def stalled(self, now: float) -> bool:
        return now < self.frozen_until

    def _thaw(self, now: float, incarnation: int) -> None:
        if not self.alive_as(incarnation) or self.stalled(now):
            return
        held, self._held = self._held, []
        for src, msg in held:
            self.on_message(src, msg, now)

    def restart(self, now: float) -> None:
        self.up = True
        self._start(now)

    def alive_as(self, incarnation: int) -> bool:
        return self.up and self.incarnation == incarnation

    def next_deadline(self) -> float | None:
        t = self.proto.next_deadline()
        if t is not None and t < self.frozen_until:
            return self.frozen_until  # late, as a held loop's timer is
        return t

    def tick(self, now: float) -> None:
        self.proto.tick(now)
        self._flush()

    def settled(self) -> bool:
        """Every message this sender sent is settled (durable: every committed one, and
        nothing is left to commit or to resume)."""
        if self.store is None:
            return len(self.results) == len(self.planned)
        durable = self.durable
        return (
            self.up
            and durable is not None
            and not durable.resume_due
            and not self.store.busy
            and not self.proto.tracker.pending_count()
        )

    # -- sending -----------------------------------------------------------------------

    def submit(self, plan: Planned, now: float) -> None:
        """Send a planned message (a sender's ``send`` or ``publish``)."""
        self.planned[plan.msg_id] = plan
        if self.durable is not None:
            if self.up:  # a process that is down sends nothing
                self.durable.send(plan, now)
            return
        self.proto.submit(
            plan.msg_id,
            plan.msg_type,
            plan.recipient or plan.msg_type,
            plan.policy,
            now,
            plan.event,
            plan.key,
        )
        self._flush()

    def _flush(self) -> None:
        """Send the items this step transmitted as one batch (as an outbox would)."""
        if self._out:
            items, self._out = tuple(self._out), []
            self.net.send(self.addr, HUB, Items(items))

    # -- EndpointIO ----------------------------------------------------------------------

    def transmit(self, hub: int, msg_id: bytes, attempt: int, now: float) -> None:
        if self.durable is not None:  # what the outbox row's frame says
            msg_type, recipient, kind, deadline_ns, key = self.durable.frame(msg_id)
            self._out.append(Item(msg_id, msg_type, recipient, kind, attempt, deadline_ns, key=key))
            return
        plan = self.planned[msg_id]
        deadline_ns = int((plan.at + plan.policy.life) * 1e9)
        kind = KIND_EVENT if plan.event else 1
        self._out.append(
            Item(
                msg_id,
                plan.msg_type,
                plan.recipient or "",
                kind,
                attempt,
                deadline_ns,
                priority=plan.priority,
                key=plan.key,
            )
        )

    def send_acks(self, hub: int, msg_ids: list[bytes], peer: bytes) -> None:
        self.net.send(self.addr, HUB, AckGroup(peer, list(msg_ids), []))

    def send_ack(self, hub: int, ack: AckReply, peer: bytes) -> None:
        if ack.outcome == Outcome.IN_PROGRESS:
            self.ledger.lease["in-progress notices"] += 1
        self.net.send(self.addr, HUB, AckGroup(peer, [], [ack]))

    def send_hello(self, hub: int) -> None:
        hello = Hello(
            self.identity,
            self.commands,
            self.events,
            int(self.heartbeat * 1000),
            self.implements,
            self.max_concurrency,
        )
        self.net.send(self.addr, HUB, hello)

    def send_heartbeat(self, hub: int) -> None:
        self.net.send(self.addr, HUB, Heartbeat())

    def acked(self, completions: Sequence[Completion]) -> None:
        for c in completions:
            self.results[c.msg_id] = c
        if self.durable is not None:
            self.durable.acked(completions)

    def failed(self, completion: Completion, error: DeliveryError) -> None:
        self.results[completion.msg_id] = completion
        if self.durable is not None:
            self.durable.failed(completion, error)

    def hub_silent(self, hub: int, silence: float) -> None:
        pass

    def start_waiting(self, hub: int, item: InboundItem, now: float) -> None:
        assert isinstance(item, Item)
        self.ledger.lease["waited for a slot"] += 1
        self._run(item, now)

    # -- receiving -----------------------------------------------------------------------

    def on_message(self, src: str, msg: object, now: float) -> None:
        if self._held or now < self.frozen_until + THAW:
            self._held.append((src, msg))  # unread until the loop runs again
            return
        proto = self.proto
        proto.begin_batch(0, now)
        try:
            if isinstance(msg, Items):
                for item in msg.items:
                    if proto.accept(0, item, now):
                        self._run(item, now)
            elif isinstance(msg, AckGroup):
                proto.on_acks(_identity(msg.peer), msg.ok_ids, msg.full, now)
            elif isinstance(msg, Routed):
                proto.on_routed(msg.msg_id, msg.services, now, msg.implements)
            elif isinstance(msg, Welcome):
                proto.on_welcome(0, msg.heartbeat_ms, now, HUB_IDENTITY)
                if self.durable is not None:
                    self.durable.welcomed()
            elif isinstance(msg, Refusal):
                proto.on_refusal(0, msg.code, msg.msg_id, msg.text, now)
        finally:
            proto.end_batch()
        self._flush()

    def _run(self, item: Item, now: float) -> None:
        """Run the handler: at once (acked with its batch) or after a while. A durable
        handler returns at once; its inbox commit takes the while."""
        self.ledger.started.add((self.identity.service, item.id))
        if self.durable is not None:
            exc = self._outcome()
            if exc is None:
                self._committing[item.id] = item
            self.durable.run(item, now, exc)
            return
        self.active += 1
        if item.key:
            if item.key in self.keys_running:
                self.ledger.violations.append(
                    f"{self.addr} runs two messages of ordering key {item.key} at once"
                )
            self.keys_running.add(item.key)
        if self.active > self.max_concurrency:
            self.ledger.violations.append(
                f"{self.addr} runs {self.active} handlers at once, above its max_concurrency"
                f" {self.max_concurrency}"
            )
        if self.rng.random() < AT_ONCE:
            self._finish(item, now, in_batch=True)
            return
        incarnation = self.incarnation
        proto = self.proto

        def done(at: float) -> None:
            if self.stalled(at):  # a handler's end waits for the loop too
                self.net.call_at(self.frozen_until + THAW, done)
                return
            if self.alive_as(incarnation) and self.proto is proto:
                self._finish(item, at, in_batch=False)
                self._flush()

        if self.rng.random() < LONG:
            self.ledger.lease["long handlers"] += 1
            self.net.call_at(now + self.rng.uniform(0.5, 3.0), done)
            return
        self.net.call_at(now + self.rng.uniform(0.0, 0.25), done)

    def _finish(self, item: Item, now: float, *, in_batch: bool) -> None:
        self.active -= 1
        self.keys_running.discard(item.key)
        proto = self.proto
        exc = self._outcome()
        if exc is not None:
            proto.handled(0, item, now, exc)
            return
        self._record_run(item)
        if in_batch:
            proto.handled_ok(item.id, item.peer)
        else:
            proto.handled(0, item, now)

    def _outcome(self) -> BaseException | None:
        """How a handler run ends: OK (None), or the error it raises."""
        roll = self.rng.random()
        if roll < self.fail_rate:
            return RuntimeError("simulated failure")
        if roll < 2 * self.fail_rate:
            return RetryLater(0.1)
        return None

    def _committed(self, table: str, msg_id: bytes) -> None:
        """Durable mode: a row reached the disk (the store's ground truth)."""
        if table == "outbox":
            self.accepted.add(msg_id)
        else:  # an inbox record: a handler run that committed
            self._record_run(self._committing[msg_id])  # kept: a broken deduper runs twice

    def _record_run(self, item: Item) -> None:
        """The ledger's view of a successful run: a second run needs a cause."""
        ledger = self.ledger
        key = (self.identity.service, item.id)
        first = ledger.ok_runs.get(key)
        me = (self.addr, self.incarnation, item.routed_by)
        if first is None:
            ledger.ok_runs[key] = me
            if item.key:
                ledger.key_runs.setdefault((key[0], item.key), []).append(item.id)
            return
        if first[:2] == me[:2]:
            ledger.violations.append(
                f"{self.addr} ran {item.id.hex()} twice in one incarnation (dedupe failed)"
            )
            return
        if self.store is not None and first[0] == me[0]:
            ledger.violations.append(
                f"{self.addr} (durable) ran {item.id.hex()} to a committed success twice, in"
                f" incarnations {first[1]} and {me[1]} (its inbox did not dedupe)"
            )
            return
        owner = self.net.nodes[first[0]]
        if isinstance(owner, SimEndpoint) and owner.store is not None:
            # A durable runner's crash loses nothing: only a diversion explains a rerun.
            cause = ledger.diverted.get(key, "unexplained")
            if cause == "unexplained":
                ledger.violations.append(
                    f"{item.id.hex()} ran on {self.addr} although durable {first[0]} committed"
                    " it and the message was never routed away from it"
                )
        elif owner.incarnation != first[1]:
            cause = "crashed"
        elif key in ledger.diverted:
            cause = ledger.diverted[key]
        else:
            cause = "unexplained"
            ledger.violations.append(
                f"{item.id.hex()} ran on {self.addr} although {first[0]} ran it, is"
                " alive, and the message was never routed away from it"
            )
        ledger.reruns[cause] += 1
        ledger.ok_runs[key] = me


# -- the hub driver -------------------------------------------------------------------------


class SimHub:
    """The stateless router: a :class:`HubProtocol`, lost on every crash."""

    def __init__(self, net: SimNetwork, ledger: Ledger) -> None:
        self.addr = HUB
        self.net = net
        self.ledger = ledger
        self.up = True
        self.incarnation = 0
        self.restarts = 0
        self._batches: dict[bytes, list[Item]] = {}
        self._start(0.0)

    def _start(self, now: float) -> None:
        self.proto: HubProtocol[Item, Run, AckReply] = HubProtocol(
            self,
            heartbeat=HUB_HEARTBEAT,
            misses=3,
            grace=HUB_GRACE,
            sticky_ttl=120.0,
            stall_limit=HUB_STALL_LIMIT,
        )
        self.proto.identity = HUB_IDENTITY
        self.proto.start(now)

    def crash(self, now: float) -> None:
        self.up = False
        self.incarnation += 1

    def restart(self, now: float) -> None:
        self.up = True
        self.restarts += 1
        self._start(now)

    def next_deadline(self) -> float | None:
        return self.proto.next_deadline()

    def tick(self, now: float) -> None:
        self.proto.tick(now)
        self._flush()

    def on_message(self, src: str, msg: object, now: float) -> None:
        peer = src.encode()
        proto = self.proto
        try:
            if isinstance(msg, Items):
                proto.begin(peer, msg.items[0].id, now)
                for item in msg.items:
                    proto.route(peer, item, now)
                self._flush()
            elif isinstance(msg, AckGroup):
                proto.acks(peer, [msg], now)
                self._flush()
            elif isinstance(msg, Hello):
                proto.hello(
                    peer,
                    msg.identity,
                    _token(msg.identity),
                    msg.commands,
                    msg.events,
                    msg.max_concurrency,
                    msg.heartbeat_ms,
                    now,
                    msg.implements,
                )
                self._flush()
            elif isinstance(msg, Heartbeat):
                proto.heard(peer, now)
        except RemoteProtocolError as exc:
            self.net.send(HUB, src, Refusal(exc.code, exc.message_id, str(exc)))

    def _flush(self) -> None:
        batches, self._batches = self._batches, {}
        for target, items in batches.items():
            self.net.send(HUB, target.decode(), Items(tuple(items)))

    # -- HubIO ---------------------------------------------------------------------------

    def forward(self, target: bytes, item: Item, origin: bytes) -> None:
        copy = replace(item, peer=origin, routed_by=self.incarnation)
        routing = self.proto.routing
        inst = routing.instance(target)
        assert inst is not None
        if routing.in_flight(target) > inst.max_concurrency:
            self.ledger.violations.append(
                f"hub has {routing.in_flight(target)} messages in flight to {target.decode()},"
                f" above its max_concurrency {inst.max_concurrency}"
            )
        self._check_sticky(inst.identity.service, target.decode(), item.id)
        self._batches.setdefault(target, []).append(copy)

    def forward_run(self, run: Run, targets: Sequence[bytes], origin: bytes) -> None:
        raise AssertionError("the simulation sends no packed runs")

    def routed(
        self,
        origin: bytes,
        msg_id: bytes,
        services: tuple[str, ...],
        implements: tuple[tuple[str, ...], ...],
    ) -> None:
        self.net.send(HUB, origin.decode(), Routed(msg_id, services, implements))

    def no_route(self, origin: bytes, msg_id: bytes, reason: str, attempt: int) -> None:
        error = RemoteError("NoRoute", reason)
        ack = AckReply(msg_id, Outcome.NO_ROUTE, HUB_IDENTITY, error, attempt=attempt)
        self.net.send(HUB, origin.decode(), AckGroup(_token(HUB_IDENTITY), [], [ack]))

    def retry_later(self, origin: bytes, msg_id: bytes, after: float, attempt: int) -> None:
        ack = AckReply(
            msg_id,
            Outcome.RETRY_LATER,
            HUB_IDENTITY,
            retry_after=after,
            attempt=attempt,
            deferred=True,
        )
        self.net.send(HUB, origin.decode(), AckGroup(_token(HUB_IDENTITY), [], [ack]))

    def held(self, origin: bytes, msg_id: bytes, attempt: int, lease: float) -> None:
        self.ledger.lease["held notices"] += 1
        ack = AckReply(msg_id, Outcome.HELD, HUB_IDENTITY, retry_after=lease, attempt=attempt)
        self.net.send(HUB, origin.decode(), AckGroup(_token(HUB_IDENTITY), [], [ack]))

    def settled(self, full: Sequence[AckReply]) -> tuple[list[bytes], list[bytes]]:
        ended = [a.msg_id for a in full if a.outcome != Outcome.IN_PROGRESS]
        return ended, [a.msg_id for a in full if a.outcome == Outcome.IN_PROGRESS]

    def split(self, run: Run) -> list[Item]:
        raise AssertionError("the simulation sends no packed runs")

    def forward_acks(
        self, origin: bytes, ok_ids: Sequence[bytes], full: Sequence[AckReply], receiver: bytes
    ) -> None:
        self.net.send(HUB, origin.decode(), AckGroup(receiver, list(ok_ids), list(full)))

    def send_welcome(self, peer: bytes, heartbeat_ms: int) -> None:
        self.net.send(HUB, peer.decode(), Welcome(heartbeat_ms))

    def send_heartbeat(self, peer: bytes) -> None:
        self.net.send(HUB, peer.decode(), Heartbeat())

    def refused(self, origin: bytes, msg_id: bytes, code: str, reason: str) -> None:
        self.net.send(HUB, origin.decode(), Refusal(code, msg_id, reason))

    def forgotten(
        self, peer: bytes, instance: Instance | None, why: str, tell: bool = False
    ) -> None:
        if tell:
            self.net.send(HUB, peer.decode(), Refusal(NOT_REGISTERED, b"", why))

    def connected(self, peer: bytes) -> bool:
        """A connection is up while its node is (a stalled node's too), and not cut."""
        addr = peer.decode()
        node = self.net.nodes.get(addr)
        return node is not None and node.up and not self.net.cut(HUB, addr, self.net.now)

    def stalled(self, peer: bytes, instance: Instance | None, silence: float, up: bool) -> None:
        self.ledger.stalls["kept registered by the hub" if up else "resumed at the hub"] += 1

    def _check_sticky(self, service: str, addr: str, msg_id: bytes) -> None:
        """The sticky contract: a retry goes where the previous attempt went while that
        instance is registered with this hub."""
        key = (service, msg_id)
        ledger = self.ledger
        last = ledger.last_route.get(key)
        if last is not None and last[0] != addr:
            if last[1] != self.incarnation:
                ledger.diverted.setdefault(key, "hub-restart")
            elif self.proto.routing.instance(last[0].encode()) is None:
                ledger.diverted.setdefault(key, "unregistered")
            else:
                ledger.violations.append(
                    f"hub routed {msg_id.hex()} to {addr}, but the previous attempt went to"
                    f" {last[0]}, which is still registered (sticky routing failed)"
                )
        ledger.last_route[key] = (addr, self.incarnation)
