"""The hub's routing table: which live instance gets which message.

Instances register with their identity, the command types they handle, the event types they
subscribe to and their ``max_concurrency`` (how many messages they handle at once: a hard
limit, as RabbitMQ's ``basic.qos`` or JetStream's MaxAckPending). A command goes
to one instance of the one service that handles its type (or of the named recipient service);
an event goes to one instance of every subscribing service.

Choosing the instance. Dedupe state lives in an instance, so a retry must go back to the
instance that first got the message while it lives. Two mechanisms keep it there:

1. a bounded sticky map (message id → instance, with a TTL) remembers each choice;
2. the choice itself is *rendezvous hashing* of (message id, instance identity): every
   instance gets a pseudo-random score per message and the best-scoring one with room
   wins. So a hub that restarted (its sticky map lost) or a second hub running side by
   side picks the same instance for a retry, as long as the same instances are registered
   and the first pick was not diverted by a full instance.

Load is spread because scores are uniform over instances; an instance at its limit
(in-flight count ≥ max_concurrency) is skipped while another one has room, and when every
eligible one is full (or a retry's sticky instance is), routing answers :data:`FULL`: the
hub holds the message (:mod:`ackbus.core.holding`) until an instance has room. In-flight
counts go up when a message is routed and down on :meth:`RoutingTable.on_acks`, which the
hub calls for every answer that ends a delivery (OK acks, and full acks other than
IN_PROGRESS), or when its sticky entry expires or is evicted, so a lost ack cannot leak
a slot forever.

Ambiguity rule: if several *services* handle a command type and the sender named no
recipient, the command is not routed (no-route, with :meth:`RoutingTable.no_route_reason`
saying which services compete): guessing would silently pick a winner, and adding a service
would change where existing traffic goes.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ._values import Identity

__all__ = ["FULL", "Instance", "RoutingTable"]

FULL: Final = b""
"""What routing answers for a message that has a route but whose every eligible instance
(or its sticky instance, for a retry) is at its ``max_concurrency``: the hub holds it. No
peer address is empty, so it never names an instance."""

_MASK64 = (1 << 64) - 1


def _score(msg_key: int, instance_key: bytes) -> int:
    """Rendezvous score: stable across processes (unlike ``hash()``), well mixed."""
    x = zlib.crc32(instance_key, msg_key)
    x = ((x ^ (x >> 16)) * 0x9E3779B97F4A7C15) & _MASK64
    return x ^ (x >> 29)


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance as the table knows it."""

    peer: bytes
    """Transport address (e.g. the ZeroMQ routing id)."""
    identity: Identity
    commands: frozenset[str]
    events: frozenset[str]
    max_concurrency: int
    """Most messages routed to it and not answered at once (its HELLO says so)."""
    registered_at: float
    implements: frozenset[str] = frozenset()
    """Schema services (full names) whose handlers the instance runs."""

    @property
    def key(self) -> bytes:
        return f"{self.identity.service}/{self.identity.instance}".encode()


_Stick = tuple[bytes, float, bool]
"""Where a message went: ``(instance key, routed at, credit still held)``. A plain tuple,
replaced rather than changed: up to ``sticky_capacity`` (100,000) live at once, and
Python's cyclic garbage collector stops tracking a tuple of bytes, floats and bools,
while it scans every object with slots (or a tuple subclass) at each full collection
(docs/performance.md)."""
_NEVER: Final = float("inf")
_KEY: Final = 0
_AT: Final = 1
_OPEN: Final = 2

_StickyKey = bytes | tuple[bytes, str]


class RoutingTable:
    """Registered instances and the sticky choices made for messages in flight."""

    def __init__(self, *, sticky_ttl: float = 60.0, sticky_capacity: int = 100_000) -> None:
        self.sticky_ttl = sticky_ttl
        self.sticky_capacity = sticky_capacity
        self._instances: dict[bytes, Instance] = {}
        self._by_key: dict[bytes, bytes] = {}
        """Instance key ("service/instance") → current peer address."""
        self._keys: dict[bytes, bytes] = {}
        """Peer → instance key (cached encoding)."""
        self._commands: dict[str, dict[str, list[bytes]]] = {}
        """Command type → service → peers handling it."""
        self._events: dict[str, dict[str, list[bytes]]] = {}
        self._in_flight: dict[bytes, int] = {}
        """Instance key → messages routed to it and not acked. Keyed by identity, not peer,
        and kept across re-registration: each count is paid back exactly once, by an ack
        or by its sticky entry expiring."""
        self._stalled: set[bytes] = set()
        """Peers whose loop is stalled (the hub protocol's call): a first attempt goes
        to another instance of the service while one is not stalled; retries stick."""
        self._limit: dict[bytes, int] = {}
        """Instance key → its max_concurrency (while registered)."""
        self.freed: set[bytes] | None = None
        """Instance keys whose count went down since the hub protocol last looked, or
        ``None`` when it holds no message (then nobody needs to know)."""
        self._homes: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        """(ordering key, service) → the instance key its messages go to while that
        instance is registered (the most recently used ``sticky_capacity`` keys)."""
        self._sticky: OrderedDict[_StickyKey, _Stick] = OrderedDict()
        self._expires_at = _NEVER
        """No sticky entry expires before this (entries are added in time order, so it is
        the oldest's expiry, or earlier if that one left): routing checks one float per
        message instead of looking at the oldest entry."""

    # -- membership ------------------------------------------------------------------------

    def register(
        self,
        peer: bytes,
        identity: Identity,
        commands: Iterable[str],
        events: Iterable[str],
        max_concurrency: int,
        now: float,
        implements: Iterable[str] = (),
    ) -> Instance:
        """Add (or refresh) an instance. A known identity under a new peer address replaces
        the old address (the instance reconnected)."""
        inst = Instance(
            peer,
            identity,
            frozenset(commands),
            frozenset(events),
            max(max_concurrency, 1),
            now,
            frozenset(implements),
        )
        key = inst.key
        old_peer = self._by_key.get(key)
        if old_peer is not None:
            self.unregister(old_peer)
        if peer in self._instances:
            self.unregister(peer)
        self._instances[peer] = inst
        self._by_key[key] = peer
        self._keys[peer] = key
        self._limit[key] = inst.max_concurrency
        self._in_flight.setdefault(key, 0)
        if self.freed is not None:
            self.freed.add(key)  # room, perhaps, for what the hub holds
        for table, types in ((self._commands, inst.commands), (self._events, inst.events)):
            for msg_type in types:
                table.setdefault(msg_type, {}).setdefault(identity.service, []).append(peer)
        return inst

    def unregister(self, peer: bytes) -> Instance | None:
        """Remove an instance (it said bye or liveness declared it dead)."""
        inst = self._instances.pop(peer, None)
        if inst is None:
            return None
        self._stalled.discard(peer)
        key = self._keys.pop(peer)
        if self._by_key.get(key) == peer:
            del self._by_key[key]
            del self._limit[key]
        if not self._in_flight.get(key):
            self._in_flight.pop(key, None)
        service = inst.identity.service
        for table, types in ((self._commands, inst.commands), (self._events, inst.events)):
            for msg_type in types:
                services = table[msg_type]
                peers = services[service]
                peers.remove(peer)
                if not peers:
                    del services[service]
                    if not services:
                        del table[msg_type]
        return inst

    def instance(self, peer: bytes) -> Instance | None:
        return self._instances.get(peer)

    def is_stalled(self, peer: bytes) -> bool:
        return peer in self._stalled

    def set_stalled(self, peer: bytes, stalled: bool) -> None:
        """Mark a registered instance stalled (silent, connection up) or live again: a
        stalled one is chosen for a first attempt only when every other is stalled or
        full, like an instance without free credit. A retry (``first=False``) is chosen
        as if none were stalled: without a sticky entry (a restarted hub) the rendezvous
        choice must stay the one made before, or the handler may run twice."""
        if stalled and peer in self._instances:
            self._stalled.add(peer)
        else:
            self._stalled.discard(peer)

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    def in_flight(self, peer: bytes) -> int:
        key = self._keys.get(peer)
        return self._in_flight.get(key, 0) if key is not None else 0

    def sticky_count(self) -> int:
        return len(self._sticky)

    def has_room(self, peer: bytes) -> bool:
        """Whether ``peer`` is below its max_concurrency."""
        key = self._keys[peer]
        return self._in_flight[key] < self._limit[key]

    def instance_key(self, peer: bytes) -> bytes:
        """The key ("service/instance") of the registered instance at ``peer``."""
        return self._keys[peer]

    def peer_of(self, key: bytes) -> bytes | None:
        """The current address of the instance ``key`` ("service/instance")."""
        return self._by_key.get(key)

    def handles(self, name: str) -> bool:
        """Whether a live instance handles command type or rpc ``name``."""
        return name in self._commands

    def command_services(self, msg_type: str) -> tuple[str, ...]:
        """The services with an instance registered that handles command ``msg_type``."""
        services = self._commands.get(msg_type)
        return tuple(services) if services else ()

    def command_service(self, msg_type: str, recipient: str | None) -> str:
        """The service a routable command goes to (the one handling it, or the recipient)."""
        if recipient:
            return recipient
        services = self._commands.get(msg_type)
        return next(iter(services)) if services else ""

    def pinned(self, sticky_key: _StickyKey, peers: list[bytes]) -> bytes | None:
        """The instance key a retry must wait for: where the message went before, while
        that instance is registered among ``peers`` (else ``None``: any will do)."""
        stick = self._sticky.get(sticky_key)
        if stick is None:
            return None
        peer = self._by_key.get(stick[_KEY])
        return stick[_KEY] if peer is not None and peer in peers else None

    def sticky_instance(self, sticky_key: _StickyKey) -> bytes | None:
        """The key of the registered instance a message went to before, if any."""
        stick = self._sticky.get(sticky_key)
        return stick[_KEY] if stick is not None and stick[_KEY] in self._by_key else None

    def peers_for(self, msg_type: str, recipient: str | None, service: str = "") -> list[bytes]:
        """The instances a command (or, with ``service``, that service's share of an
        event) may go to; empty when none."""
        if service:
            return self._events.get(msg_type, {}).get(service) or []
        return self._command_peers(msg_type, recipient) or []

    def assign(self, sticky_key: _StickyKey, peer: bytes, now: float) -> None:
        """A held message goes to ``peer`` (which has room): its slot and sticky entry."""
        stick = self._sticky.pop(sticky_key, None)
        if stick is not None and stick[_OPEN]:
            self._release(stick[_KEY])
        self._take(sticky_key, peer, now)

    # -- routing ---------------------------------------------------------------------------

    def route_command(
        self,
        msg_type: str,
        msg_id: bytes,
        recipient: str | None,
        now: float,
        first: bool = True,
        key: int = 0,
    ) -> bytes | None:
        """The peer to send a command to, ``None`` (no route: see
        :meth:`no_route_reason`) or :data:`FULL` (hold it). A retry goes to the instance
        that got the first attempt while that instance is registered; a message with an
        ordering ``key`` to its key's instance (:meth:`home`)."""
        peers = self._command_peers(msg_type, recipient)
        if peers is None:
            return None
        return self._pick(msg_id, msg_id, peers, now, first, key)

    def home(self, key: int, peers: list[bytes]) -> bytes:
        """The instance (a peer among ``peers``, one service's) that the messages of
        ordering ``key`` go to: the one they went to before while it is registered,
        else the best rendezvous score of the key, whatever its room or stall (a key
        moves only when its instance is gone; a full one holds the message)."""
        service = self._instances[peers[0]].identity.service
        homes = self._homes
        where = (key, service)
        known = homes.get(where)
        if known is not None:
            peer = self._by_key.get(known)
            if peer is not None and peer in peers:
                homes.move_to_end(where)
                return peer
        keys = self._keys
        msg_key = zlib.crc32(key.to_bytes(8, "little"))
        best = max(peers, key=lambda p: _score(msg_key, keys[p]))
        homes[where] = keys[best]
        homes.move_to_end(where)
        if len(homes) > self.sticky_capacity:
            homes.popitem(last=False)
        return best

    def route_commands(
        self, msg_type: str, msg_ids: Sequence[bytes], recipient: str | None, now: float
    ) -> list[bytes] | None:
        """:meth:`route_command` for consecutive commands of one type and recipient, in
        one call: the peer (or :data:`FULL`) for each id, in order, or ``None`` when none
        of them has a route (that depends on the type and recipient alone). The sticky
        entries, counts and choices are exactly those of one :meth:`route_command` per id.

        A hub forwards tens of thousands of commands a second, most of them to a
        service with one instance: then no credit count decides anything, and each id
        costs a sticky entry (one shared tuple), a credit and the eviction of the
        oldest entry of a full table, with no call per id."""
        peers = self._command_peers(msg_type, recipient)
        if peers is None:
            return None
        pick = self._pick
        if len(peers) != 1:
            return [pick(msg_id, msg_id, peers, now) for msg_id in msg_ids]
        best = peers[0]
        key = self._keys[best]
        in_flight = self._in_flight
        if in_flight[key] + len(msg_ids) > self._limit[key]:  # not room for all: one by one
            return [pick(msg_id, msg_id, peers, now) for msg_id in msg_ids]
        sticky = self._sticky
        capacity = self.sticky_capacity
        entry: _Stick = (key, now, True)
        expires_at = self._expires_at
        evict = sticky.popitem
        owed = 0  # credits taken and not yet counted: counted before anything reads them
        for msg_id in msg_ids:
            if msg_id in sticky:  # a retry, or an id seen before: as _pick does it
                in_flight[key] += owed
                owed = 0
                pick(msg_id, msg_id, peers, now)
                expires_at = self._expires_at
                continue
            owed += 1
            sticky[msg_id] = entry
            if len(sticky) > capacity:  # full: the oldest entry makes room
                _, oldest = evict(last=False)
                if oldest[_OPEN]:
                    in_flight[key] += owed
                    owed = 0
                    self._release(oldest[_KEY])
            if now >= expires_at:
                in_flight[key] += owed
                owed = 0
                self._expire(now)
                expires_at = self._expires_at
            elif expires_at == _NEVER:
                expires_at = self._expires_at = now + self.sticky_ttl
        in_flight[key] += owed
        return [best] * len(msg_ids)

    def route_event(
        self,
        msg_type: str,
        msg_id: bytes,
        now: float,
        first: bool = True,
        held: Container[object] = (),
        key: int = 0,
    ) -> list[tuple[str, bytes]]:
        """``(service, peer)`` for one instance of every service subscribing to the type
        (the peer :data:`FULL` where that service's instances are all full); empty when
        none does). A share in ``held`` (keys ``(msg_id, service)``: the hub holds it
        already) is :data:`FULL` without a choice. With an ordering ``key``: each
        service's instance for the key (:meth:`home`)."""
        services = self._events.get(msg_type)
        if not services:
            return []
        return [
            (
                service,
                FULL
                if held and (msg_id, service) in held
                else self._pick((msg_id, service), msg_id, peers, now, first, key),
            )
            for service, peers in services.items()
        ]

    def no_route_reason(self, msg_type: str, recipient: str | None) -> str:
        """Why :meth:`route_command` found no route, in words for the sender's error."""
        services = self._commands.get(msg_type)
        if recipient:
            if not services or recipient not in services:
                return f"no live instance of service {recipient!r} handles {msg_type}"
            return "routed"
        if not services:
            return f"no live service handles {msg_type}"
        if len(services) > 1:
            names = ", ".join(sorted(services))
            return f"ambiguous: services {names} all handle {msg_type}; name a recipient"
        return "routed"

    def on_ack(self, peer: bytes, msg_id: bytes | None = None) -> None:
        """``peer`` answered a message: its slot is free again. With ``msg_id`` the credit of
        the instance the message was routed to is paid back once, however often the ack is
        repeated and whichever instance sent it (an older copy may be acked elsewhere)."""
        if msg_id is None:
            key = self._keys.get(peer)
            if key is not None:
                self._release(key)
            return
        self.on_acks(peer, (msg_id,))

    def on_acks(self, peer: bytes, msg_ids: Iterable[bytes]) -> None:
        """:meth:`on_ack` for every id of an ACK group from ``peer``, in one call (a hub
        forwards tens of thousands of acks a second)."""
        sticky = self._sticky
        inst = self._instances.get(peer)
        service = inst.identity.service if inst is not None else None
        # Ids routed in one batch share one entry (route_commands), so they share the
        # closed one too; and the credit is paid back per stretch of ids that went to
        # the same instance (nothing reads it in between: same counts as one by one).
        opened: _Stick | None = None
        closed: _Stick = (b"", 0.0, False)
        owner = b""
        owed = 0
        for msg_id in msg_ids:
            skey: _StickyKey = msg_id
            stick = sticky.get(skey)
            if stick is None:
                if service is None:
                    continue
                skey = (msg_id, service)
                stick = sticky.get(skey)
            if stick is None or not stick[_OPEN]:
                continue
            if stick is not opened:
                opened = stick
                closed = (stick[_KEY], stick[_AT], False)
            sticky[skey] = closed  # keeps its place in the order
            if stick[_KEY] != owner:
                if owed:
                    self._release(owner, owed)
                owner = stick[_KEY]
                owed = 0
            owed += 1
        if owed:
            self._release(owner, owed)

    def touch(self, peer: bytes, msg_ids: Iterable[bytes], now: float) -> None:
        """``peer`` says it still runs (or holds) these messages (IN_PROGRESS): their
        slots and sticky entries count from ``now`` (see :meth:`release_stale`)."""
        sticky = self._sticky
        inst = self._instances.get(peer)
        service = inst.identity.service if inst is not None else None
        for msg_id in msg_ids:
            skey: _StickyKey = msg_id
            stick = sticky.get(skey)
            if stick is None and service is not None:
                skey = (msg_id, service)
                stick = sticky.get(skey)
            if stick is not None and stick[_OPEN]:
                del sticky[skey]  # to the end: the map stays in time order
                sticky[skey] = (stick[_KEY], now, True)

    def release_stale(self, before: float) -> None:
        """Free the slots of messages routed (or last said to be running) before
        ``before`` and not answered since: a receiver reports each message it has
        every few hundred ms (an answer, or IN_PROGRESS), so one it says nothing
        about never reached it (a frame lost with a broken link) or was answered by
        an answer that got lost. The sticky entries stay."""
        sticky = self._sticky
        for skey, stick in sticky.items():
            if stick[_AT] >= before:
                break
            if stick[_OPEN]:
                sticky[skey] = (stick[_KEY], stick[_AT], False)
                self._release(stick[_KEY])

    def tick(self, now: float) -> None:
        """Expire sticky entries older than the TTL."""
        self._expire(now)

    # -- internals -------------------------------------------------------------------------

    def _command_peers(self, msg_type: str, recipient: str | None) -> list[bytes] | None:
        """The instances a command may go to, or ``None`` (see :meth:`no_route_reason`)."""
        services = self._commands.get(msg_type)
        if not services:
            return None
        if recipient:
            return services.get(recipient) or None
        if len(services) == 1:
            return next(iter(services.values()))
        return None

    def _pick(
        self,
        sticky_key: _StickyKey,
        msg_id: bytes,
        peers: list[bytes],
        now: float,
        first: bool = True,
        order: int = 0,
    ) -> bytes:
        """The instance for a message (taking its slot), or :data:`FULL`. Only an
        instance with room is chosen; for a first attempt, one whose loop is not stalled
        while there is one with room (see :meth:`set_stalled`). A message with an
        ordering key (``order``, its hash) goes to its key's instance (:meth:`home`) or
        waits for it."""
        sticky = self._sticky
        stick = sticky.get(sticky_key)
        in_flight = self._in_flight
        if stick is not None:
            key = stick[_KEY]
            peer = self._by_key.get(key)
            if peer is not None and peer in peers:
                if self._stalled and peer in self._stalled:
                    # A retry waits for its own instance, held: forwarded into a stalled
                    # loop's socket it would only fill it (and at rcvhwm libzmq drops the
                    # connection); its handler is running or queued there already.
                    return FULL
                if not stick[_OPEN]:
                    if in_flight[key] >= self._limit[key]:
                        return FULL  # a retry waits for its own instance
                    sticky[sticky_key] = (key, stick[_AT], True)
                    in_flight[key] += 1
                return peer
        keys = self._keys
        limit = self._limit
        if order:
            best = self.home(order, peers)
            if in_flight[keys[best]] >= limit[keys[best]]:
                return FULL  # its key's instance is full: held for it, never diverted
        elif len(peers) == 1:
            best = peers[0]
            if in_flight[keys[best]] >= limit[keys[best]]:
                return FULL  # a stale entry stays: its instance may come back first
        else:
            stalled = self._stalled if first else None
            msg_key = zlib.crc32(msg_id)
            best = FULL
            best_score = -1
            best_stalled = FULL
            best_stalled_score = -1
            for peer in peers:
                key = keys[peer]
                if in_flight[key] < limit[key]:
                    score = _score(msg_key, key)
                    if stalled and peer in stalled:
                        if score > best_stalled_score:
                            best_stalled, best_stalled_score = peer, score
                    elif score > best_score:
                        best, best_score = peer, score
            if best is FULL:
                if best_stalled is FULL:
                    return FULL
                best = best_stalled  # every instance with room is stalled
        if stick is not None:  # its instance left: the message goes elsewhere
            del sticky[sticky_key]
            if stick[_OPEN]:
                self._release(stick[_KEY])
        self._take(sticky_key, best, now)
        return best

    def _take(self, sticky_key: _StickyKey, best: bytes, now: float) -> None:
        """``best`` gets the message: a slot and a sticky entry."""
        sticky = self._sticky
        best_key = self._keys[best]
        self._in_flight[best_key] += 1
        sticky[sticky_key] = (best_key, now, True)
        if len(sticky) > self.sticky_capacity:  # full: the oldest entry makes room
            _, oldest = sticky.popitem(last=False)
            if oldest[_OPEN]:
                self._release(oldest[_KEY])
        if now >= self._expires_at:
            self._expire(now)
        elif self._expires_at == _NEVER:
            self._expires_at = now + self.sticky_ttl

    def _expire(self, now: float) -> None:
        sticky = self._sticky
        limit = now - self.sticky_ttl
        self._expires_at = _NEVER
        while sticky:
            stick = next(iter(sticky.values()))
            if stick[_AT] > limit and len(sticky) <= self.sticky_capacity:
                self._expires_at = stick[_AT] + self.sticky_ttl
                break
            sticky.popitem(last=False)
            if stick[_OPEN]:
                self._release(stick[_KEY])

    def _release(self, key: bytes, count: int = 1) -> None:
        """Pay ``count`` credits back to ``key``; the count of an instance that left
        goes when it reaches zero."""
        n = self._in_flight.get(key)
        if n is None:
            return
        if n > count or key in self._by_key:
            self._in_flight[key] = max(n - count, 0)
            if self.freed is not None:
                self.freed.add(key)
        else:
            del self._in_flight[key]
