"""The actors of the simulation: senders, service instances and a hub, over ``simnet``.

They use the core exactly as the endpoint and the hub do (trackers, dedupers, liveness, the
routing table, driven by events and ``now``), exchange small message objects through a
:class:`~ackbus.testing.simnet.SimNetwork`, and record the ground truth the checks in
:mod:`ackbus.testing.simulate` need in a :class:`Ledger`: which instance incarnation ran which
message, and why a hub routed a retry somewhere new.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from ..core import Identity, Policy
from ..core._common import Outcome, RemoteError
from ..core.dedupe import InboundDeduper, Verdict
from ..core.liveness import Liveness, PeerDead, negotiate
from ..core.routing import RoutingTable
from ..core.tracker import Completion, OutboundTracker, Transmit
from .simnet import SimNetwork

__all__ = [
    "COMMANDS",
    "EVENTS",
    "HUB",
    "SERVICES",
    "AckMsg",
    "Env",
    "Hello",
    "Ledger",
    "Planned",
    "SimHub",
    "SimInstance",
    "SimSender",
]

HUB = "hub"
SERVICES = {"alpha": 3, "beta": 2, "gamma": 1}
COMMANDS = {"alpha": ["alpha.Do", "shared.Cmd"], "beta": ["beta.Do", "shared.Cmd"], "gamma": []}
EVENTS = {"alpha": ["ev.Tick"], "beta": ["ev.Tick"], "gamma": ["ev.Tick"]}
HUB_HEARTBEAT_MS = 300
HELLO_RETRY = 0.2
HUB_GRACE = 2.0
"""After a restart the hub routes nothing for this long (senders retry), so that instances
re-register first: a retry then finds the instance that ran it, and nothing is refused as
no-route or routed around an instance the new hub does not know yet."""


# -- messages on the simulated wire ---------------------------------------------------------


@dataclass(slots=True)
class Env:
    msg_id: bytes
    msg_type: str
    recipient: str | None
    sender: str
    deadline: float
    event: bool
    attempt: int
    routed_by: int = 0
    """Incarnation of the hub that routed this copy."""

    def __str__(self) -> str:
        return f"env {self.msg_type} {self.msg_id.hex()} #{self.attempt}"


@dataclass(slots=True)
class AckMsg:
    msg_id: bytes
    outcome: Outcome
    receiver: Identity | None
    to: str
    retry_after: float = 0.0
    error: RemoteError | None = None

    def __str__(self) -> str:
        return f"ack {self.msg_id.hex()} {self.outcome.name} by {self.receiver}"


@dataclass(slots=True)
class RoutedMsg:
    msg_id: bytes
    services: tuple[str, ...]


@dataclass(slots=True)
class Hello:
    identity: Identity
    commands: tuple[str, ...]
    events: tuple[str, ...]
    heartbeat_ms: int
    credit: int


@dataclass(slots=True)
class Welcome:
    heartbeat_ms: int


class Heartbeat:
    def __str__(self) -> str:
        return "heartbeat"


class NotRegistered:
    def __str__(self) -> str:
        return "not-registered"


# -- bookkeeping shared by the actors -------------------------------------------------------


@dataclass(slots=True)
class Ledger:
    """Ground truth the actors cannot see: who ran what, who is alive."""

    ok_runs: dict[tuple[str, bytes], tuple[str, int, int]] = field(default_factory=dict)
    """(service, msg_id) → (instance addr, its incarnation, routing hub's incarnation) of the
    first successful run."""
    last_route: dict[tuple[str, bytes], tuple[str, int]] = field(default_factory=dict)
    """(service, msg_id) → (instance addr, hub incarnation) of the latest routing."""
    diverted: dict[tuple[str, bytes], str] = field(default_factory=dict)
    """Messages a hub routed to another instance than the previous time, and why: the previous
    one was not registered ("unregistered"), or the hub restarted since, losing its sticky map
    ("hub-restart"). From then on two instances may hold a dedupe entry, and a second run is
    allowed. Any other change of instance is a sticky-routing violation."""
    reruns: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Planned:
    msg_id: bytes
    msg_type: str
    recipient: str | None
    event: bool
    at: float
    policy: Policy
    expect: str
    """"acked", "no-route" or "nobody" (an event acked by no one)."""


class SimSender:
    def __init__(self, addr: str, net: SimNetwork, rng: random.Random) -> None:
        self.addr = addr
        self.up = True
        self.incarnation = 0
        self.net = net
        self.tracker = OutboundTracker(window=8, rng=random.Random(rng.random()))
        self.planned: dict[bytes, Planned] = {}
        self.results: dict[bytes, Completion] = {}

    def submit(self, plan: Planned, now: float) -> None:
        self.planned[plan.msg_id] = plan
        admit = self.tracker.submit(
            plan.msg_id,
            msg_type=plan.msg_type,
            destination=HUB,
            policy=plan.policy,
            now=now,
            expect=None if plan.event else 1,
        )
        if admit.value == "send":
            self._transmit(plan.msg_id, 1, now)

    def _transmit(self, msg_id: bytes, attempt: int, now: float) -> None:
        plan = self.planned[msg_id]
        env = Env(
            msg_id,
            plan.msg_type,
            plan.recipient,
            self.addr,
            plan.at + plan.policy.deadline,
            plan.event,
            attempt,
        )
        self.net.send(self.addr, HUB, env)

    def _settled(self, completion: Completion | None) -> None:
        if completion is not None:
            self.results[completion.msg_id] = completion

    def on_message(self, src: str, msg: object, now: float) -> None:
        if isinstance(msg, AckMsg):
            self._settled(
                self.tracker.ack(
                    msg.msg_id,
                    outcome=msg.outcome,
                    now=now,
                    receiver=msg.receiver,
                    error=msg.error,
                    retry_after=msg.retry_after,
                )
            )
        elif isinstance(msg, RoutedMsg):
            self._settled(self.tracker.routed(msg.msg_id, msg.services, now))

    def next_deadline(self) -> float | None:
        return self.tracker.next_deadline()

    def tick(self, now: float) -> None:
        for action in self.tracker.tick(now):
            if isinstance(action, Transmit):
                self._transmit(action.msg_id, action.attempt, now)
            else:
                self._settled(action)


class SimInstance:
    """One instance of a service: a deduper, a handler, heartbeats to the hub."""

    def __init__(self, service: str, index: int, net: SimNetwork, ledger: Ledger) -> None:
        self.service = service
        self.addr = f"{service}/{index}"
        self.identity = Identity(service, str(index))
        self.net = net
        self.ledger = ledger
        self.up = True
        self.incarnation = 0
        self.heartbeat_ms = net.rng.choice((200, 300, 500))
        self.fail_rate = 0.0
        self._start(0.0)

    def _start(self, now: float) -> None:
        self.dedupe = InboundDeduper(capacity=10_000, ttl=600.0)
        self.live: Liveness[str] = Liveness(interval=self.heartbeat_ms / 1000, misses=3)
        self.registered = False
        self.hello_at: float | None = now

    def crash(self, now: float) -> None:
        self.up = False
        self.incarnation += 1

    def restart(self, now: float) -> None:
        self.up = True
        self._start(now)

    def alive_as(self, incarnation: int) -> bool:
        return self.up and self.incarnation == incarnation

    def _send(self, msg: object, now: float) -> None:
        self.live.sent(HUB, now)
        self.net.send(self.addr, HUB, msg)

    def _hello(self, now: float) -> None:
        svc = self.service
        hello = Hello(
            self.identity, tuple(COMMANDS[svc]), tuple(EVENTS[svc]), self.heartbeat_ms, 1000
        )
        self._send(hello, now)
        self.hello_at = now + HELLO_RETRY

    def next_deadline(self) -> float | None:
        t = self.live.next_deadline()
        if self.hello_at is not None and (t is None or self.hello_at < t):
            return self.hello_at
        return t

    def tick(self, now: float) -> None:
        if self.hello_at is not None and self.hello_at <= now:
            self._hello(now)
        for action in self.live.tick(now):
            if isinstance(action, PeerDead):
                # The hub went quiet: it may have restarted. Say hello until welcomed.
                self.registered = False
                self._hello(now)
            else:
                self._send(Heartbeat(), now)

    def on_message(self, src: str, msg: object, now: float) -> None:
        self.live.seen(HUB, now)
        if isinstance(msg, Env):
            self._on_env(msg, now)
        elif isinstance(msg, Welcome):
            if not self.registered:
                self.registered = True
                self.hello_at = None
                self.live.add(HUB, now, interval=msg.heartbeat_ms / 1000)
        elif isinstance(msg, NotRegistered) and self.hello_at is None:
            self.registered = False
            self._hello(now)

    def _on_env(self, env: Env, now: float) -> None:
        verdict = self.dedupe.begin(env.msg_id, now)
        if verdict is Verdict.RUNNING:
            return
        if verdict is Verdict.DONE:
            record = self.dedupe.record(env.msg_id)
            assert record is not None
            outcome = Outcome.DUPLICATE if record.outcome == Outcome.OK else record.outcome
            self._send(AckMsg(env.msg_id, outcome, self.identity, env.sender, 0, record.error), now)
            return
        if now > env.deadline:
            self._finish(env, Outcome.EXPIRED, now)
            return
        incarnation = self.incarnation
        duration = self.net.rng.uniform(0.0, 0.25)

        def done(at: float) -> None:
            if self.alive_as(incarnation):
                self._run(env, at)

        self.net.call_at(now + duration, done)

    def _run(self, env: Env, now: float) -> None:
        """The handler returns (or raises) at ``now``."""
        roll = self.net.rng.random()
        if roll < self.fail_rate:
            err = RemoteError("TransientError", "simulated failure", permanent=False)
            self.dedupe.finish(env.msg_id, Outcome.REJECTED, now, error=err)
            self._send(AckMsg(env.msg_id, Outcome.REJECTED, self.identity, env.sender, 0, err), now)
            return
        if roll < 2 * self.fail_rate:
            self.dedupe.finish(env.msg_id, Outcome.RETRY_LATER, now)
            self._send(AckMsg(env.msg_id, Outcome.RETRY_LATER, self.identity, env.sender, 0.1), now)
            return
        key = (self.service, env.msg_id)
        first = self.ledger.ok_runs.get(key)
        me = (self.addr, self.incarnation, env.routed_by)
        if first is None:
            self.ledger.ok_runs[key] = me
        elif first[:2] == me[:2]:
            self.ledger.violations.append(
                f"{self.addr} ran {env.msg_id.hex()} twice in one incarnation (dedupe failed)"
            )
        else:
            owner = self.net.nodes[first[0]]
            if owner.incarnation != first[1]:
                cause = "crashed"
            elif key in self.ledger.diverted:
                cause = self.ledger.diverted[key]
            else:
                cause = "unexplained"
                self.ledger.violations.append(
                    f"{env.msg_id.hex()} ran on {self.addr} although {first[0]} ran it, is"
                    " alive, and the message was never routed away from it"
                )
            self.ledger.reruns[cause] += 1
            self.ledger.ok_runs[key] = me
        self._finish(env, Outcome.OK, now)

    def _finish(self, env: Env, outcome: Outcome, now: float) -> None:
        self.dedupe.finish(env.msg_id, outcome, now)
        self._send(AckMsg(env.msg_id, outcome, self.identity, env.sender), now)


class SimHub:
    """The stateless router: a routing table and liveness, lost on every crash."""

    def __init__(self, net: SimNetwork, ledger: Ledger) -> None:
        self.addr = HUB
        self.net = net
        self.ledger = ledger
        self.up = True
        self.incarnation = 0
        self.restarts = 0
        self._start(0.0)

    def _start(self, now: float) -> None:
        self.table = RoutingTable(sticky_ttl=120.0)
        self.live: Liveness[bytes] = Liveness(interval=HUB_HEARTBEAT_MS / 1000, misses=3)
        self.started_at = now
        self.grace_until = now + (HUB_GRACE if self.restarts else 0.0)

    def crash(self, now: float) -> None:
        self.up = False
        self.incarnation += 1

    def restart(self, now: float) -> None:
        self.up = True
        self.restarts += 1
        self._start(now)

    def next_deadline(self) -> float | None:
        return self.live.next_deadline()

    def tick(self, now: float) -> None:
        for action in self.live.tick(now):
            peer = action.peer
            if isinstance(action, PeerDead):
                self.table.unregister(peer)
            else:
                self._to_peer(peer, Heartbeat(), now)

    def _to_peer(self, peer: bytes, msg: object, now: float) -> None:
        self.live.sent(peer, now)
        self.net.send(HUB, peer.decode(), msg)

    def on_message(self, src: str, msg: object, now: float) -> None:
        if isinstance(msg, Env):
            self._on_env(src, msg, now)
            return
        peer = src.encode()
        if isinstance(msg, Hello):
            interval = negotiate(HUB_HEARTBEAT_MS, msg.heartbeat_ms)
            self.table.register(peer, msg.identity, msg.commands, msg.events, msg.credit, now)
            self.live.add(peer, now, interval=interval / 1000)
            self._to_peer(peer, Welcome(interval), now)
            return
        known = self.table.instance(peer) is not None
        if known:
            self.live.seen(peer, now)
        else:
            self.net.send(HUB, src, NotRegistered())
        if isinstance(msg, AckMsg):
            if known:
                self.table.on_ack(peer, msg.msg_id)
            self.net.send(HUB, msg.to, msg)

    def _in_grace(self, now: float) -> bool:
        return now < self.grace_until

    def _on_env(self, sender: str, env: Env, now: float) -> None:
        table = self.table
        if self._in_grace(now):
            return
        if env.event:
            pairs = table.route_event(env.msg_type, env.msg_id, now)
            self.net.send(HUB, sender, RoutedMsg(env.msg_id, tuple(s for s, _ in pairs)))
            for service, target in pairs:
                self._forward(service, target, env, now)
            return
        peer = table.route_command(env.msg_type, env.msg_id, env.recipient, now)
        if peer is None:
            reason = table.no_route_reason(env.msg_type, env.recipient)
            err = RemoteError("NoRoute", reason, permanent=False)
            self.net.send(HUB, sender, AckMsg(env.msg_id, Outcome.NO_ROUTE, None, sender, 0, err))
            return
        inst = table.instance(peer)
        assert inst is not None
        self._forward(inst.identity.service, peer, env, now)

    def _forward(self, service: str, peer: bytes, env: Env, now: float) -> None:
        copy = Env(
            env.msg_id, env.msg_type, env.recipient, env.sender, env.deadline, env.event,
            env.attempt, routed_by=self.incarnation,
        )  # fmt: skip
        # Check the sticky contract: a retry goes where the previous attempt went while that
        # instance is registered with this hub.
        key = (service, env.msg_id)
        addr = peer.decode()
        ledger = self.ledger
        last = ledger.last_route.get(key)
        if last is not None and last[0] != addr:
            if last[1] != self.incarnation:
                ledger.diverted.setdefault(key, "hub-restart")
            elif self.table.instance(last[0].encode()) is None:
                ledger.diverted.setdefault(key, "unregistered")
            else:
                ledger.violations.append(
                    f"hub routed {env.msg_id.hex()} to {addr}, but the previous attempt went to"
                    f" {last[0]}, which is still registered (sticky routing failed)"
                )
        ledger.last_route[key] = (addr, self.incarnation)
        self._to_peer(peer, copy, now)
