"""The hub protocol: everything a hub decides, with no I/O.

Beside the :class:`~ackbus.core.RoutingTable` (which instance gets which message),
:class:`HubProtocol` owns who is registered, each peer's liveness, the grace period
after start, the messages held for an instance with room (:mod:`ackbus.core.holding`),
and what to answer: forward an item, say where an event went, hold a message and say
so, refuse a retry during the grace period, answer "no route", forward acks to their
senders, greet, heartbeat, forget a dead peer. Actions go out through the :class:`HubIO` its driver
gives it, as for :class:`~ackbus.core.endpoint_protocol.EndpointProtocol`: the asyncio
:class:`~ackbus.hub.Hub` encodes them with ``ackbus.wire``; the simulation puts them on
its simulated network.

The hub parses no envelope and no body: an item is read by its fixed header only
(:class:`HubItem`), and a run of first-attempt commands of one type (:class:`HubRun`,
the wire's packed form) is routed in one call.

A silent peer whose connection is still up (:meth:`HubIO.connected`: its kernel still
acknowledges what is sent to it, whatever the peer's Python loop does) is *stalled*, not
dead: an ``async def`` handler blocks its loop, or the process is stopped. It stays
registered and keeps its sticky routes (retries of its messages wait for it instead of
running again elsewhere), new messages go to other instances of its service while there
are any, and it is forgotten only when its connection drops or after ``stall_limit``
seconds of silence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from ..errors import RemoteProtocolError
from ._values import Identity
from .drift import Drift, SchemaDrift
from .holding import Held, HoldQueues
from .liveness import Liveness, PeerDead, SendHeartbeat
from .routing import FULL, Instance, RoutingTable

__all__ = ["AccessRules", "AckGroup", "HubIO", "HubItem", "HubProtocol", "HubRun", "HubStats"]

KIND_EVENT = 2
"""The item kind of an event (the wire's ``KIND_EVENT``; a test checks it)."""
NOT_REGISTERED = "NOT_REGISTERED"
IN_USE = "IN_USE"
"""A HELLO for an identity registered on another live connection (the wire's code)."""
UNAUTHORIZED = "UNAUTHORIZED"
"""What the access file does not allow (the wire's code)."""
HOUSEKEEPING = 1.0
"""Seconds between sweeps of the sticky-routing map."""


class HubItem(Protocol):
    """What the hub reads of one message item: its fixed header."""

    @property
    def id(self) -> bytes: ...
    @property
    def type(self) -> str: ...
    @property
    def method(self) -> str:
        """The rpc the item names ("package.Service/Method"; "" for none)."""
        ...

    @property
    def recipient(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def key(self) -> int:
        """The ordering key's hash (0: none)."""
        ...


class HubRun(Protocol):
    """First-attempt commands of one type, rpc and recipient, routed together."""

    @property
    def ids(self) -> Sequence[bytes]: ...
    @property
    def type(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def recipient(self) -> str: ...


I = TypeVar("I", bound=HubItem)  # noqa: E741 - the item type, as in the docs
R = TypeVar("R", bound=HubRun)
A = TypeVar("A")
I_inv = TypeVar("I_inv", bound=HubItem)
R_contra = TypeVar("R_contra", bound=HubRun, contravariant=True)
A_contra = TypeVar("A_contra", contravariant=True)
A_co = TypeVar("A_co", covariant=True)


@dataclass(slots=True)
class HubStats:
    """Counters since the hub started."""

    routed: int = 0
    """Message items forwarded to an instance (an event counts once per service)."""
    no_route: int = 0
    deferred: int = 0
    """Retries answered retry-later during the grace period after start."""
    held: int = 0
    """Messages held because every instance that may take them was at its
    max_concurrency (each counted once, however often retried)."""
    overflow: int = 0
    """Messages answered retry-later because their service's hold queues were full."""
    acks_forwarded: int = 0
    registered: int = 0
    """HELLOs accepted (re-registrations included)."""
    dead_peers: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """Refusals sent, by code."""
    unauthenticated: int = 0
    """CURVE handshakes refused because the client's key is not enrolled (hub with keys)."""
    stalled: int = 0
    """Times a silent peer was kept registered because its connection was still up."""
    key_limit: int = 0
    """HELLOs refused because their CURVE key had ``max_instances_per_key`` instances
    registered already (also counted in ``refused``, as LIMIT)."""
    out_of_descriptors: int = 0
    """Accepts that failed because the process or system ran out of file descriptors
    (EMFILE, ENFILE), as the listener's socket monitor reported them. libzmq tries again
    at once while a connection waits, so this grows by many thousands a second for as
    long as it lasts: its rate being nonzero is the signal, not its size."""
    unauthorized: int = 0
    """Messages refused because the access file does not let their sender's key send
    their type (HELLOs refused by it are counted in ``refused``)."""
    schema_drift: int = 0
    """Distinct disagreements noticed between live peers on a message type's schema
    fingerprint (one per type and pair of fingerprints; :mod:`ackbus.core.drift`)."""


class HubIO(Protocol[I_inv, R_contra, A_contra]):
    """The actions a :class:`HubProtocol` takes, carried out by its driver. ``peer`` is
    a transport address (e.g. a ZeroMQ routing id). The type parameters are the
    driver's item, run and full-ack types (the hub reads no full ack: it passes them on)."""

    def forward(self, target: bytes, item: I_inv, origin: bytes) -> None:
        """Send ``item`` (as it arrived) to ``target`` with ``origin``, the token of the
        identity its sender registered (what the receiver's handler sees as its sender,
        and what its acks name to come back)."""

    def forward_run(self, run: R_contra, targets: Sequence[bytes], origin: bytes) -> None:
        """Send each of ``run``'s items to the target at the same position (``origin``
        as for :meth:`forward`)."""

    def routed(
        self,
        origin: bytes,
        msg_id: bytes,
        services: tuple[str, ...],
        implements: tuple[tuple[str, ...], ...],
    ) -> None:
        """Tell ``origin`` which services its event ``msg_id`` went to, and which schema
        services each runs (one tuple per service); for a command routed by its type,
        which service handles that type (the first such command of each type in a
        multipart), so that its sender accepts acks from that service alone."""

    def no_route(self, origin: bytes, msg_id: bytes, reason: str, attempt: int) -> None:
        """Answer attempt ``attempt`` of a command no instance can take (a NO_ROUTE ack
        from the hub, naming the attempt: the sender then knows it reached nobody)."""

    def retry_later(self, origin: bytes, msg_id: bytes, after: float, attempt: int) -> None:
        """Answer with RETRY_LATER after ``after`` seconds, routing nothing (grace
        period, full hold queue): the attempt is not spent (the ack's ``deferred``)."""

    def held(self, origin: bytes, msg_id: bytes, attempt: int, lease: float) -> None:
        """Tell ``origin`` that its message waits at the hub for an instance with room
        (a HELD ack: no attempt spent; the next word comes within ``lease`` seconds)."""

    def settled(self, full: Sequence[A_contra]) -> tuple[list[bytes], list[bytes]]:
        """The ids of the full acks that end a delivery (every outcome but
        IN_PROGRESS: their instance's slot is free again), and of the IN_PROGRESS
        notices (the message still runs there)."""

    def split(self, run: R_contra) -> Sequence[I_inv]:
        """The items of ``run``, one by one (when some of them must be held)."""

    def forward_acks(
        self, origin: bytes, ok_ids: Sequence[bytes], full: Sequence[A_contra], receiver: bytes
    ) -> None:
        """Pass acks from the instance ``receiver`` (its token) on to their sender."""

    def refused(self, origin: bytes, msg_id: bytes, code: str, reason: str) -> None:
        """Refuse message ``msg_id`` from ``origin`` (a REFUSAL naming it: its sender's
        report fails), e.g. UNAUTHORIZED by the access file."""

    def send_welcome(self, peer: bytes, heartbeat_ms: int) -> None: ...

    def send_heartbeat(self, peer: bytes) -> None: ...

    def forgotten(
        self, peer: bytes, instance: Instance | None, why: str, tell: bool = False
    ) -> None:
        """``peer`` is no longer registered (bye, silent, unreachable, displaced);
        ``tell``: its connection may still be up, so say so to it (a NOT_REGISTERED
        refusal: it says HELLO again)."""

    def connected(self, peer: bytes) -> bool:
        """Whether ``peer``'s connection is still up, as far as the transport can tell
        (asked only of a peer that went silent)."""

    def stalled(self, peer: bytes, instance: Instance | None, silence: float, up: bool) -> None:
        """``peer`` went silent for ``silence`` seconds with its connection up (``up``
        True: kept registered as stalled), or spoke again after that (``up`` False)."""


class AccessRules(Protocol):
    """What each client key may do (a hub's access file, ``ackbus._access.Access``):
    ``None`` when allowed, else the refusal's words naming the key and the rule."""

    def may_serve(self, key: str, service: str) -> str | None: ...

    def may_send(self, key: str, msg_type: str) -> str | None: ...

    def may_handle(self, key: str, msg_type: str) -> str | None: ...


class AckGroup(Protocol[A_co]):
    """Acks from one instance for one sender (``peer``): plain OK ids and full acks."""

    @property
    def peer(self) -> bytes: ...
    @property
    def ok_ids(self) -> list[bytes]: ...
    @property
    def full(self) -> Sequence[A_co]: ...


class HubProtocol(Generic[I, R, A]):
    """One hub's registrations, liveness and routing decisions (module docstring)."""

    def __init__(
        self,
        io: HubIO[I, R, A],
        *,
        heartbeat: float = 1.0,
        misses: int = 3,
        grace: float | None = None,
        sticky_ttl: float = 60.0,
        stall_limit: float = 60.0,
        max_held: int = 10_000,
    ) -> None:
        self.io = io
        self.stall_limit = stall_limit
        """Seconds of silence after which a peer whose connection is still up is
        forgotten all the same (a deadlocked process is not kept forever)."""
        self._stalled: dict[bytes, float] = {}
        """Silent peers kept registered (connection up) → since when they are silent."""
        self.heartbeat = heartbeat
        self.grace = 2 * heartbeat if grace is None else grace
        """Seconds after start during which retries (attempt > 1) are answered
        retry-later instead of routed: see :meth:`route`."""
        self.grace_until = 0.0
        self.routing = RoutingTable(sticky_ttl=sticky_ttl)
        self.holds: HoldQueues[I] = HoldQueues(max_held)
        """Messages waiting for an instance with room (at most ``max_held`` per service)."""
        self.hold_lease = misses * heartbeat
        """How long a sender waits after a HELD notice; the hub repeats the notice
        every heartbeat while it holds the message."""
        self._next_notice = 0.0
        self.liveness: Liveness[bytes] = Liveness(interval=heartbeat, misses=misses)
        self.stats = HubStats()
        self.drift = SchemaDrift()
        """The registered peers' schema fingerprints (what :meth:`hello` compares)."""
        self._tokens: dict[bytes, bytes] = {}
        """Peer → its token (encoded identity), put on what it sends: the messages (the
        receivers' handlers see it as the sender) and the acks (the sender's tracker
        checks it)."""
        self._origins: dict[bytes, bytes] = {}
        """Token → peer: where the acks naming a token go (the connection its identity
        is registered on now)."""
        self._told: dict[bytes, dict[str, str]] = {}
        """Peer → command type → the service last named to it as handling that type
        (:meth:`_name_service`): per connection, like its registration, and gone with it."""
        self.access: AccessRules | None = None
        """A hub's access file: who may register as what and send what (None: any
        admitted key may do anything). Set it with :meth:`set_access`."""
        self.keys: dict[bytes, str] = {}
        """Peer → the name of the CURVE key its registration was made with ("" for an
        in-process peer, which no access file governs); a hub with keys only."""
        self._per_key: Counter[str] = Counter()
        """Key name → how many peers are registered with it now (:attr:`keys` counted)."""
        self.identity: Identity | None = None
        """The hub's own identity: no peer may register under its name (a sender takes
        a hub's answers for any message)."""
        self._next_sweep = 0.0
        self._lost_view = False
        """Every peer went silent and was forgotten (the hub was cut off, or frozen past
        the connections' timeout): the next HELLO makes it rejoin (:meth:`_rejoin`)."""
        self._last_input = 0.0
        """When anything last came in from a registered peer: a gap of more than two of
        the longest heartbeat intervals means the hub, not its peers, was cut off."""
        self.rejoin_until = 0.0
        """Until then every message, first attempts too, is answered retry-later: the
        hub is rejoining after it was cut off, and what reaches it now may have been
        sent before the cut (held up in TCP) and routed since by another hub, while
        the instances have not all registered here again (see :meth:`_rejoin`)."""

    def start(self, now: float) -> None:
        """The hub starts routing at ``now``; the grace period begins."""
        self.grace_until = now + self.grace
        self._next_sweep = now + HOUSEKEEPING
        self._last_input = now

    def registered(self, peer: bytes) -> bool:
        return peer in self._tokens

    @property
    def peer_count(self) -> int:
        """Peers registered now."""
        return len(self._tokens)

    # ------------------------------------------------------------------ peers

    def hello(
        self,
        peer: bytes,
        identity: Identity,
        token: bytes,
        commands: Sequence[str],
        events: Sequence[str],
        max_concurrency: int,
        heartbeat_ms: int,
        now: float,
        implements: Sequence[str] = (),
        key: str | None = None,
        fingerprints: Mapping[str, bytes] | None = None,
    ) -> list[Drift]:
        """A peer registers (or registers again); ``token`` names it on what it sends;
        ``max_concurrency`` (0: 1000) bounds what it is sent at once; ``implements``:
        the schema services whose handlers it runs; ``fingerprints``: its schema
        fingerprint per message type. Returns the new disagreements of those with
        other live peers' (each counted in :attr:`HubStats.schema_drift`, and returned
        once per type and pair of fingerprints: the driver logs them).

        ``key``: the name of the CURVE key the HELLO came with (a hub with keys; ""
        in-process). With an access file (:attr:`access`) the key must be allowed to
        serve the service and handle each type, and a command type another service
        handles may only be declared by a key also allowed to serve that service (so
        nobody else can make it ambiguous): else UNAUTHORIZED.

        An identity registered on another connection is taken over only when that
        connection is gone (:meth:`HubIO.connected`) or was registered with the same
        key: the connection displaced is forgotten and told so. Else the HELLO is
        refused (IN_USE), as is one whose service is the hub's own name."""
        if self.identity is not None and identity.service == self.identity.service:
            raise RemoteProtocolError(
                f"service name {identity.service!r} is this hub's own name: a sender "
                "takes any answer from a hub's identity",
                code=IN_USE,
            )
        if key and self.access is not None:
            why = self._unauthorized(key, identity.service, commands, events)
            if why is not None:
                raise RemoteProtocolError(why, code=UNAUTHORIZED)
        old = self._origins.get(token)
        if old is not None and old != peer:
            same_key = bool(key) and self.keys.get(old) == key
            if not same_key and self.io.connected(old):
                raise RemoteProtocolError(
                    f"instance {identity} is registered on another live connection; "
                    "an instance id is taken over only once its connection is gone",
                    code=IN_USE,
                )
            self.forget(old, f"displaced by a new connection of {identity}", tell=True)
        previous = self._tokens.get(peer)
        if previous is not None and previous != token:
            del self._origins[previous]  # the same connection, registered as another
        if self._lost_view:
            # Like a restarted hub, this one knows none of the sticky choices made while
            # it was cut off: other hubs routed first attempts meanwhile, and the
            # instances that got them may not have said HELLO here yet.
            self._lost_view = False
            self._rejoin(now)
        else:
            self._input(now)
        interval_ms = max(int(self.heartbeat * 1000), heartbeat_ms)
        limit = max_concurrency or 1000
        self.routing.register(peer, identity, commands, events, limit, now, implements)
        self._tokens[peer] = token
        self._origins[token] = peer
        self._told.pop(peer, None)  # (again): it may have lost what it was told
        if key is not None:
            self._set_key(peer, key)
        self.liveness.add(peer, now, interval=interval_ms / 1000)
        if self._stalled:
            self._resume(peer, now)
        self.stats.registered += 1
        drifts = self.drift.announce(peer, identity, fingerprints or {})
        self.stats.schema_drift = self.drift.disagreements
        self.io.send_welcome(peer, interval_ms)
        self.dispatch(now)  # what it may take of the held messages
        return drifts

    def _unauthorized(
        self, key: str, service: str, commands: Sequence[str], events: Sequence[str]
    ) -> str | None:
        """Why the access file refuses ``key`` registering as ``service`` with these
        handlers (None: allowed)."""
        access = self.access
        assert access is not None
        why = access.may_serve(key, service)
        if why is not None:
            return why
        for msg_type in (*commands, *events):
            why = access.may_handle(key, msg_type)
            if why is not None:
                return why
        for msg_type in commands:
            for other in self.routing.command_services(msg_type):
                if other != service and access.may_serve(key, other) is not None:
                    return (
                        f"command type {msg_type} is handled by service {other!r}, which "
                        f"key {key!r} may not serve: a second service would make it ambiguous"
                    )
        return None

    def set_access(self, access: AccessRules | None) -> None:
        """Use these rules from now on (a reloaded access file): a registered instance
        they no longer allow is forgotten and told so (its connection stays; its next
        HELLO is judged by the new rules)."""
        self.access = access
        if access is None:
            return
        for peer, key in list(self.keys.items()):
            inst = self.routing.instance(peer)
            if not key or inst is None:
                continue
            why = self._unauthorized(key, inst.identity.service, (), ())
            for msg_type in (*inst.commands, *inst.events):
                why = why or access.may_handle(key, msg_type)
            if why is not None:
                self.forget(peer, f"no longer allowed: {why}", tell=True)

    def _set_key(self, peer: bytes, key: str | None) -> None:
        """``peer`` is registered with ``key`` now (None: no longer registered)."""
        old = self.keys.pop(peer, None)
        if old is not None:
            left = self._per_key.pop(old, 0) - 1
            if left > 0:
                self._per_key[old] = left
        if key is not None:
            self.keys[peer] = key
            self._per_key[key] += 1

    def instances_of(self, key: str) -> int:
        """How many peers are registered with CURVE key ``key`` now."""
        return self._per_key.get(key, 0)

    def adds_instance(self, peer: bytes, token: bytes, key: str) -> bool:
        """Whether a HELLO from ``peer`` as ``token`` with ``key`` would add an instance
        of ``key``: not when ``peer`` is registered with it already (a HELLO again), nor
        when the identity is registered with it on another connection (a takeover by
        the same key: the old one is forgotten)."""
        if self.keys.get(peer) == key:
            return False
        old = self._origins.get(token)
        return old is None or self.keys.get(old) != key

    def heard(self, peer: bytes, now: float) -> None:
        """A heartbeat (or anything) from ``peer``; refused before its HELLO."""
        if peer not in self._tokens:
            raise RemoteProtocolError("heartbeat before HELLO", code=NOT_REGISTERED)
        self._seen(peer, now)
        freed = self.routing.freed
        if freed is not None:  # retries may wait for it (held while it was quiet)
            inst = self.routing.instance(peer)
            if inst is not None:
                freed.add(inst.key)
                self.dispatch(now)

    def forget(self, peer: bytes, why: str, tell: bool = False) -> None:
        """``peer`` is no longer registered; ``tell``: its connection may be up, tell it
        (it then says HELLO again)."""
        self._stalled.pop(peer, None)
        inst = self.routing.unregister(peer)
        token = self._tokens.pop(peer, None)
        if token is not None and self._origins.get(token) == peer:
            del self._origins[token]
        self._set_key(peer, None)
        self._told.pop(peer, None)
        self.drift.forget(peer)
        self.liveness.remove(peer)
        self.io.forgotten(peer, inst, why, tell)
        if inst is not None and self.holds:
            self._release_held(inst)

    # ------------------------------------------------------------------ messages

    def begin(self, peer: bytes, first_id: bytes, now: float) -> None:
        """A MESSAGE multipart from ``peer`` (``first_id``: its first item's id):
        refused unless ``peer`` said HELLO."""
        if peer not in self._tokens:
            raise RemoteProtocolError(
                "MESSAGE before HELLO", code=NOT_REGISTERED, message_id=first_id
            )
        self._seen(peer, now)

    def route(self, origin: bytes, item: I, now: float) -> None:
        """Route one item from ``origin``."""
        io = self.io
        token = self._tokens[origin]
        if self.access is not None and self._refuses(origin, item.id, item.type):
            return
        routing = self.routing
        name = self._route_name(item)
        # Something is held only while routing.freed is a set (no Python call here).
        holds = self.holds if routing.freed is not None else None
        if holds is not None and item.kind != KIND_EVENT and item.id in holds:
            self._hold(origin, item, item.id, "", None, now)  # a retry of a held one
            return
        if item.attempt > 1 and item.kind != KIND_EVENT and self._quiet_target(item.id, now):
            # Its instance has it and says nothing: forwarded again, the retry would only
            # fill a stalled loop's socket (at rcvhwm libzmq drops the connection, and
            # the instance with it). It waits here for it.
            recipient = item.recipient or None
            service = routing.command_service(name, recipient)
            peers = routing.peers_for(name, recipient)
            self._hold(origin, item, item.id, service, peers, now)
            return
        if now < self.grace_until and (item.attempt > 1 or now < self.rejoin_until):
            # A retry reaching a hub that just started may belong to a message a
            # live instance already handled, and that instance may not have said
            # HELLO again yet: routing it now could pick another instance and run
            # the handler twice. First attempts are safe; retries wait.
            self.stats.deferred += 1
            io.retry_later(origin, item.id, self.grace_until - now, item.attempt)
            return
        if item.kind == KIND_EVENT:
            services = []
            implements = []
            for service, each in sorted(
                routing.route_event(
                    item.type, item.id, now, item.attempt == 1, holds or (), item.key
                )
            ):
                if each == FULL:
                    peers = routing.peers_for(item.type, None, service)
                    if not self._hold(origin, item, (item.id, service), service, peers, now):
                        continue
                    each = peers[0]
                else:
                    io.forward(each, item, token)
                    self.stats.routed += 1
                services.append(service)
                inst = routing.instance(each)
                implements.append(tuple(sorted(inst.implements)) if inst is not None else ())
            io.routed(origin, item.id, tuple(services), tuple(implements))
            return
        recipient = item.recipient or None
        target = routing.route_command(name, item.id, recipient, now, item.attempt == 1, item.key)
        if target is None:
            self._no_route(origin, item.id, name, item.recipient, item.attempt)
            return
        if not recipient:
            self._name_service(origin, item.id, name, item.attempt > 1)
        if target == FULL:
            service = routing.command_service(name, recipient)
            self._hold(origin, item, item.id, service, routing.peers_for(name, recipient), now)
        else:
            io.forward(target, item, token)
            self.stats.routed += 1

    def _route_name(self, item: HubItem | HubRun) -> str:
        """What a command is routed by: the rpc it names while some instance registered
        that rpc, else its type (a sender or receivers of protocol version 1, and
        handlers registered by type). Events are routed by type."""
        method = item.method
        if method and self.routing.handles(method):
            return method
        return item.type

    def route_run(self, origin: bytes, run: R, now: float) -> None:
        """Route a run of first-attempt commands of one type in one call: the same
        choices and sticky entries as item by item."""
        ids = run.ids
        if now < self.rejoin_until:
            self.stats.deferred += len(ids)
            for msg_id in ids:
                self.io.retry_later(origin, msg_id, self.rejoin_until - now, 1)
            return
        if self.access is not None and self._refuses(origin, ids[0], run.type, ids):
            return
        routing = self.routing
        recipient = run.recipient or None
        name = self._route_name(run)
        targets = routing.route_commands(name, ids, recipient, now)
        if targets is None:
            for msg_id in ids:
                self._no_route(origin, msg_id, name, run.recipient, 1)
            return
        token = self._tokens[origin]
        if not recipient:
            self._name_service(origin, ids[0], name)
        if FULL not in targets:
            self.stats.routed += len(ids)
            self.io.forward_run(run, targets, token)
            return
        # Some instances are full: hold what has no room, item by item (the rare path).
        service = routing.command_service(name, recipient)
        peers = routing.peers_for(name, recipient)
        for item, target in zip(self.io.split(run), targets, strict=True):
            if target == FULL:
                self._hold(origin, item, item.id, service, peers, now)
            else:
                self.io.forward(target, item, token)
                self.stats.routed += 1

    def _refuses(
        self, origin: bytes, msg_id: bytes, msg_type: str, ids: Sequence[bytes] = ()
    ) -> bool:
        """Whether the access file refuses ``origin``'s key sending ``msg_type``; if so
        each message (``msg_id``, or all ``ids``) is refused, naming the rule."""
        key = self.keys.get(origin)
        if not key:
            return False  # in-process, or a hub without keys
        assert self.access is not None
        why = self.access.may_send(key, msg_type)
        if why is None:
            return False
        for each in ids or (msg_id,):
            self.stats.unauthorized += 1
            self.io.refused(origin, each, UNAUTHORIZED, why)
        return True

    def _name_service(
        self, origin: bytes, msg_id: bytes, msg_type: str, again: bool = False
    ) -> None:
        """Tell ``origin`` which service handles ``msg_type`` (it routed, or held, a
        command of that type by its type): its sender takes acks for such commands from
        an instance of that service alone. Said once per connection and type, again when
        the service changes, and again with each retry (``again``: the sender may have
        refused the acks of a notice it never got)."""
        service = self.routing.command_service(msg_type, None)
        told = self._told.get(origin)
        if told is None:
            told = self._told[origin] = {}
        elif not again and told.get(msg_type) == service:
            return
        if service:
            told[msg_type] = service
            self.io.routed(origin, msg_id, (service,), ((),))

    def _no_route(
        self, origin: bytes, msg_id: bytes, msg_type: str, recipient: str, attempt: int
    ) -> None:
        self.stats.no_route += 1
        reason = self.routing.no_route_reason(msg_type, recipient or None)
        self.io.no_route(origin, msg_id, reason, attempt)

    # ------------------------------------------------------------------ holding

    def _hold(
        self,
        origin: bytes,
        item: I,
        key: bytes | tuple[bytes, str],
        service: str,
        peers: list[bytes] | None,
        now: float,
    ) -> bool:
        """Hold ``item`` until an instance has room and tell its sender (a HELD
        notice); a message held already keeps its place with the newer copy. When the
        service's queues are full: RETRY_LATER, not spent (False)."""
        holds = self.holds
        known = holds.get(key)
        if known is not None:
            service = known.service
            pinned = known.pinned
        else:
            pinned = self.routing.pinned(key, peers or [])
            if pinned is None and item.key and peers:  # it waits for its key's instance
                pinned = self.routing.instance_key(self.routing.home(item.key, peers))
        name = item.type if item.kind == KIND_EVENT else self._route_name(item)
        held = Held(key, item.id, item, origin, name, service, pinned)
        if not holds.hold(held, item.priority, now):
            self.stats.overflow += 1
            self.io.retry_later(origin, item.id, self.heartbeat, item.attempt)
            return False
        if known is None:
            self.stats.held += 1
            if self.routing.freed is None:
                self.routing.freed = set()  # from now on, tell us what frees
                self._next_notice = now + self.heartbeat
        self.io.held(origin, item.id, item.attempt, self.hold_lease)
        return True

    def dispatch(self, now: float) -> None:
        """Send held messages to the instances whose slots freed, best first."""
        routing = self.routing
        freed = routing.freed
        if freed is None:
            return
        holds = self.holds
        if not holds:
            routing.freed = None
            return
        routing.freed = set()
        io = self.io
        work = list(freed)
        while work:
            key = work.pop()
            peer = routing.peer_of(key)
            inst = routing.instance(peer) if peer is not None else None
            if (
                peer is None
                or inst is None
                or routing.is_stalled(peer)
                or self.liveness.suspect(peer, now)
            ):
                continue  # a stalled instance gets what waits for it when it speaks again
            types = inst.commands | inst.events
            while routing.has_room(peer):
                held = holds.take(key, inst.identity.service, types)
                if held is None:
                    break
                sticky = routing.sticky_instance(held.key)
                if sticky is not None and sticky != key:  # its instance came back
                    holds.pin(held, sticky)
                    if sticky not in work:  # it may have room now, and nothing to free
                        work.append(sticky)
                    continue
                token = self._tokens.get(held.origin)
                if token is None:  # its sender left: it retries through its next hub
                    continue
                routing.assign(held.key, peer, now)
                io.forward(peer, held.item, token)
                self.stats.routed += 1
        if not holds:
            routing.freed = None

    def _release_held(self, inst: Instance) -> None:
        """``inst`` left: the retries held for it may go to another instance of its
        service; messages no instance takes any more are answered no-route."""
        holds = self.holds
        holds.unpin(inst.key)
        routing = self.routing
        for msg_type, service in holds.waiting_types():
            if routing.peers_for(msg_type, service) or routing.peers_for(msg_type, None, service):
                continue
            for held in holds.drop(msg_type, service):
                self._no_route(held.origin, held.msg_id, msg_type, service, held.item.attempt)
        if routing.freed is not None:  # others of its service may take them (next tick)
            service = inst.identity.service
            routing.freed.update(
                i.key for i in routing.instances() if i.identity.service == service
            )

    def _notify_held(self, now: float) -> None:
        """Every heartbeat: each held message's sender hears again that it waits."""
        lease = self.hold_lease
        held: Held[I]
        for held in self.holds:
            self.io.held(held.origin, held.msg_id, held.item.attempt, lease)
        self._next_notice = now + self.heartbeat

    # ------------------------------------------------------------------ acks

    def acks(self, peer: bytes, groups: Iterable[AckGroup[A]], now: float) -> None:
        """An ACK multipart from instance ``peer``: pass each group on to its sender.
        Every answer that ends a delivery frees its slot at the instance: the plain OK
        ids, and the full acks but IN_PROGRESS (their ids read by :meth:`HubIO.settled`)."""
        receiver = self._tokens.get(peer)
        if receiver is None:
            # The acks are dropped: their senders retry, and the receiver's deduper
            # answers the retry with the same outcome once it said HELLO again.
            raise RemoteProtocolError("ACK before HELLO", code=NOT_REGISTERED)
        self._seen(peer, now)
        routing = self.routing
        origins = self._origins
        io = self.io
        for group in groups:
            ok_ids = group.ok_ids
            full = group.full
            if ok_ids:
                routing.on_acks(peer, ok_ids)
            if full:
                ended, running = io.settled(full)
                routing.on_acks(peer, ended)
                if running:
                    routing.touch(peer, running, now)
            origin = origins.get(group.peer)
            if origin is None:
                continue  # the sender is gone; it will retry through another connection
            io.forward_acks(origin, ok_ids, full, receiver)
            self.stats.acks_forwarded += len(ok_ids) + len(full)
        if routing.freed is not None:
            self.dispatch(now)

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        t = self.liveness.next_deadline()
        if self.holds and self._next_notice < self._next_sweep:
            return self._next_notice if t is None or self._next_notice < t else t
        return self._next_sweep if t is None or self._next_sweep < t else t

    def tick(self, now: float) -> None:
        """Heartbeats due, silent peers forgotten, and the sticky map swept."""
        for action in self.liveness.tick(now):
            if isinstance(action, SendHeartbeat):
                self.io.send_heartbeat(action.peer)
            elif isinstance(action, PeerDead):
                self._silent(action, now)
        if now >= self._next_sweep:
            self.routing.tick(now)
            self._next_sweep = now + HOUSEKEEPING
        if self.holds:
            # Slots nobody said anything about for a lease are free again (a lost
            # frame must not block a full instance until its sticky entry expires).
            self.routing.release_stale(now - self.hold_lease)
            self.dispatch(now)  # expired sticky entries free slots too
            if self.holds and now >= self._next_notice:
                self._notify_held(now)

    # ------------------------------------------------------------------ stalled peers

    def stalled_peers(self) -> dict[bytes, float]:
        """Silent peers kept registered because their connection is up → silent since."""
        return dict(self._stalled)

    def _silent(self, dead: PeerDead[bytes], now: float) -> None:
        """Liveness heard nothing from a peer for ``misses`` intervals: stalled if its
        connection is still up and its silence is under :attr:`stall_limit`, else gone."""
        peer = dead.peer
        since = self._stalled.get(peer, now - dead.silence)
        silence = now - since
        if silence < self.stall_limit and self.io.connected(peer):
            # Check again after another `misses` intervals; heartbeats to it go on.
            self.liveness.add(peer, now, interval=dead.interval or None)
            if peer not in self._stalled:
                self._stalled[peer] = since
                self.stats.stalled += 1
                self.routing.set_stalled(peer, True)
                self.io.stalled(peer, self.routing.instance(peer), silence, True)
            return
        self.stats.dead_peers += 1
        up = False
        if silence >= self.stall_limit and peer in self._stalled:
            why = f"silent for {silence:.1f} s, connected but stalled beyond stall_limit"
            up = True  # told: when its loop runs again, it says HELLO again
        elif peer in self._stalled:
            why = f"silent for {silence:.1f} s, and its connection dropped"
        else:
            why = f"silent for {silence:.1f} s"
        self.forget(peer, why, tell=up)
        if not self._tokens:
            self._lost_view = True

    def _resume(self, peer: bytes, now: float) -> None:
        """``peer`` spoke: if it was stalled, it is live again."""
        since = self._stalled.pop(peer, None)
        if since is None:
            return
        routing = self.routing
        routing.set_stalled(peer, False)
        inst = routing.instance(peer)
        self.io.stalled(peer, inst, now - since, False)
        if inst is not None and routing.freed is not None:
            routing.freed.add(inst.key)  # the retries held for it go now
            self.dispatch(now)

    def _seen(self, peer: bytes, now: float) -> None:
        """Input from registered ``peer``: it is alive, live again if it was stalled."""
        self.liveness.seen(peer, now)
        self._input(now)
        if self._stalled:
            self._resume(peer, now)

    def _input(self, now: float) -> None:
        """Something came in from a registered peer. After a silence of every peer
        longer than two of the longest heartbeat intervals (each peer heartbeats every
        interval), the hub was cut off (its host partitioned) or stopped, not its
        peers: their stall marks are its own silence, and would steer first attempts
        away from instances other hubs chose. They are cleared and the hub rejoins."""
        gap = now - self._last_input
        self._last_input = now
        if gap <= 2 * self.heartbeat or not self._tokens:
            return
        if gap <= 2 * max(self.liveness.interval_of(p) for p in self._tokens):
            return
        for peer in list(self._stalled):
            self._resume(peer, now)
        self._rejoin(now)

    def _quiet_target(self, msg_id: bytes, now: float) -> bool:
        """Whether the instance a message went to before is stalled or has said nothing
        for more than 1.5 of its intervals."""
        key = self.routing.sticky_instance(msg_id)
        if key is None:
            return False
        peer = self.routing.peer_of(key)
        return peer is not None and (
            self.routing.is_stalled(peer) or self.liveness.suspect(peer, now)
        )

    def _rejoin(self, now: float) -> None:
        """The hub is back after being cut off from every peer: for one grace period
        nothing is routed (first attempts included, unlike after a restart), so every
        instance can register again before a choice is made that another hub made
        differently (docs/protocol.md, Several hubs)."""
        self.rejoin_until = max(self.rejoin_until, now + self.grace)
        self.grace_until = max(self.grace_until, self.rejoin_until)
