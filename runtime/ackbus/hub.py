"""The hub: a router that keeps no message state.

Endpoints connect DEALER links to a hub's ROUTER listener and say HELLO with the
types they handle. The hub routes each MESSAGE item by the fixed header alone (type,
recipient, kind, id) to one live instance, forwards acknowledgements back to the
sender, and answers events with a ROUTED notice naming the services they went to.
It never parses an envelope or a body, never stores a message and never retries:
reliability is end to end, so a hub can be killed and restarted (or run beside
others) and nothing is lost: endpoints reconnect, say HELLO again and retry.

Bad input from a peer is counted, logged and answered with a REFUSAL naming the
reason; it never stops the hub.

Run it embedded (``async with Hub(bind="tcp://127.0.0.1:5555") as hub``) or
standalone (``ackbus hub --bind tcp://127.0.0.1:5555``); same code.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import envelope_pb2, wire_pb2
from ._timer import Timer
from ._types import Identity
from .core import Liveness, PeerDead, RoutingTable, SendHeartbeat
from .errors import ClosedError, RemoteProtocolError
from .transport import Backend, DefaultBackend, Listener, TransportOptions
from .wire import (
    DEFAULT_LIMITS,
    KIND_EVENT,
    NOT_REGISTERED,
    Command,
    Limits,
    Multipart,
    Outbox,
    PackedRun,
    Routed,
    decode_bye,
    decode_command,
    decode_heartbeat,
    decode_hello,
    encode_heartbeat,
    encode_identity,
    encode_routed,
    encode_welcome,
    negotiate,
    refusal_for,
    scan_messages,
    split_acks,
)

__all__ = ["Hub", "HubStats"]

log = logging.getLogger("ackbus.hub")

_HOUSEKEEPING = 1.0
"""Seconds between sweeps of the sticky-routing map."""


@dataclass(slots=True)
class HubStats:
    """Counters since the hub started."""

    routed: int = 0
    """Message items forwarded to an instance (an event counts once per service)."""
    no_route: int = 0
    deferred: int = 0
    """Retries answered retry-later during the grace period after start."""
    acks_forwarded: int = 0
    registered: int = 0
    """HELLOs accepted (re-registrations included)."""
    dead_peers: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """Refusals sent, by code."""


class Hub:
    """A stateless router between endpoints. Use as an async context manager."""

    def __init__(
        self,
        bind: str | Sequence[str],
        *,
        name: str = "hub",
        heartbeat: float = 1.0,
        misses: int = 3,
        grace: float | None = None,
        backend: Backend | None = None,
        options: TransportOptions | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._bind = [bind] if isinstance(bind, str) else list(bind)
        self.identity = Identity(name, uuid.uuid4().hex)
        self._token = encode_identity(name, self.identity.instance)
        """The hub's own identity as an ack group names it (on no-route acks)."""
        self.heartbeat = heartbeat
        self.grace = 2 * heartbeat if grace is None else grace
        """Seconds after start during which retries (attempt > 1) are answered
        retry-later instead of routed: see :meth:`_on_messages`."""
        self._grace_until = 0.0
        self.limits = limits
        self.stats = HubStats()
        self._backend = backend or DefaultBackend()
        self._options = options or TransportOptions()
        self._routing = RoutingTable()
        self._liveness: Liveness[bytes] = Liveness(interval=heartbeat, misses=misses)
        self._identities: dict[bytes, bytes] = {}
        """Peer → encoded identity, put on the acks it sends."""
        self._listener: Listener | None = None
        self._timer: Timer | None = None
        self._closed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Hub:
        """Bind and start routing. :class:`~ackbus.errors.AddressError` if an address
        cannot be bound (in use, malformed); then nothing stays bound or open."""
        if self._listener is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self._timer = Timer(self._loop, self._tick)
        self._listener = self._backend.bind(
            self._bind,
            on_receive=self._on_receive,
            on_unroutable=self._on_unroutable,
            options=self._options,
        )
        self._timer.at(self._loop.time() + _HOUSEKEEPING)
        self._grace_until = self._loop.time() + self.grace
        log.info("hub %s listening on %s", self.identity, ", ".join(self.addresses))
        return self

    @property
    def addresses(self) -> tuple[str, ...]:
        """The bound addresses (a port 0 resolved to the real port)."""
        if self._listener is None:
            raise ClosedError("hub not started")
        return self._listener.addresses

    @property
    def routing(self) -> RoutingTable:
        return self._routing

    async def close(self) -> None:
        """Stop listening and release the sockets. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
        if self._listener is not None:
            self._listener.close()
        self._closed.set()

    async def serve_forever(self) -> None:
        """Run until :meth:`close` (for the standalone command)."""
        await self.start()
        await self._closed.wait()

    async def __aenter__(self) -> Hub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ receiving

    def _on_receive(self, multiparts: list[Multipart]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for mp in multiparts:
            peer = mp[0]
            frames = mp[1:]
            try:
                self._handle(peer, frames, now)
            except RemoteProtocolError as exc:
                self._refuse(peer, exc)
        self._timer_for_liveness()

    def _handle(self, peer: bytes, frames: Multipart, now: float) -> None:
        cmd = decode_command(frames)
        if cmd is Command.MESSAGE:
            self._on_messages(peer, frames, now)
        elif cmd is Command.ACK:
            self._on_acks(peer, frames, now)
        elif cmd is Command.HEARTBEAT:
            decode_heartbeat(frames)
            if peer not in self._identities:
                raise RemoteProtocolError("heartbeat before HELLO", code=NOT_REGISTERED)
            self._liveness.seen(peer, now)
        elif cmd is Command.HELLO:
            self._on_hello(peer, frames, now)
        elif cmd is Command.BYE:
            decode_bye(frames, self.limits)
            self._forget(peer, "said bye")
        else:
            raise RemoteProtocolError(f"{cmd.name} is not a command a hub accepts")

    def _on_hello(self, peer: bytes, frames: Multipart, now: float) -> None:
        hello = decode_hello(frames, self.limits)
        version = negotiate(list(hello.versions))
        identity = Identity(hello.identity.service, hello.identity.instance)
        interval_ms = max(int(self.heartbeat * 1000), hello.heartbeat_ms)
        self._routing.register(
            peer, identity, hello.commands, hello.events, hello.credit or 1000, now
        )
        self._identities[peer] = encode_identity(identity.service, identity.instance)
        self._liveness.add(peer, now, interval=interval_ms / 1000)
        self.stats.registered += 1
        welcome = wire_pb2.Welcome(
            heartbeat_ms=interval_ms, version=version, max_batch=self.limits.max_batch
        )
        welcome.hub.service = self.identity.service
        welcome.hub.instance = self.identity.instance
        out = self._out(peer)
        out.limit_batch(hello.max_batch)  # no bigger batches than the peer accepts
        out.control(encode_welcome(welcome))
        log.info(
            "registered %s: %d command types, %d event types",
            identity,
            len(hello.commands),
            len(hello.events),
        )

    def _on_messages(self, peer: bytes, frames: Multipart, now: float) -> None:
        items = scan_messages(frames, self.limits)
        if peer not in self._identities:
            first = items[0]
            raise RemoteProtocolError(
                "MESSAGE before HELLO",
                code=NOT_REGISTERED,
                message_id=first.ids[0] if isinstance(first, PackedRun) else first.id,
            )
        self._liveness.seen(peer, now)
        routing = self._routing
        sender = self._out(peer)
        notices: list[Routed] = []
        in_grace = now < self._grace_until
        for item in items:
            if isinstance(item, PackedRun):
                self._forward_run(item, peer, sender, now)
                continue
            if in_grace and item.attempt > 1:
                # A retry reaching a hub that just started may belong to a message a
                # live instance already handled, and that instance may not have said
                # HELLO again yet: routing it now could pick another instance and run
                # the handler twice. First attempts are safe; retries wait.
                self.stats.deferred += 1
                ack = _hub_ack(item.id, envelope_pb2.RETRY_LATER, self.identity)
                ack.retry_after_ms = max(1, int((self._grace_until - now) * 1000))
                sender.full_ack(ack.SerializeToString(), self._token)
                continue
            if item.kind == KIND_EVENT:
                targets = routing.route_event(item.type, item.id, now)
                for _service, each in targets:
                    self._out(each).message(item.frame, peer)
                self.stats.routed += len(targets)
                notices.append(Routed(item.id, tuple(sorted(s for s, _ in targets))))
                continue
            target = routing.route_command(item.type, item.id, item.recipient or None, now)
            if target is None:
                self._no_route(item.id, item.type, item.recipient, sender)
                continue
            self._out(target).message(item.frame, peer)
            self.stats.routed += 1
        if notices:
            sender.control(encode_routed(notices))

    def _forward_run(self, run: PackedRun, peer: bytes, sender: Outbox, now: float) -> None:
        """Route a run of first-attempt commands of one type in one call and forward
        each target's share as one chunk of the bytes they arrived in: the same
        choices, sticky entries and batches as item by item, without an object per
        item (docs/performance.md)."""
        ids = run.ids
        targets = self._routing.route_commands(run.type, ids, run.recipient or None, now)
        if targets is None:
            for msg_id in ids:
                self._no_route(msg_id, run.type, run.recipient, sender)
            return
        n = len(ids)
        self.stats.routed += n
        first = targets[0]
        if targets.count(first) == n:  # one instance, or all picked the same
            self._out(first).packed(run.chunk(), n, peer)
            return
        for target, chunk, count in run.stretches(targets):
            self._out(target).packed(chunk, count, peer)

    def _no_route(self, msg_id: bytes, msg_type: str, recipient: str, sender: Outbox) -> None:
        """Answer a command no instance can take with a NO_ROUTE ack saying why."""
        self.stats.no_route += 1
        reason = self._routing.no_route_reason(msg_type, recipient or None)
        ack = _hub_ack(msg_id, envelope_pb2.NO_ROUTE, self.identity)
        ack.error.type = "NoRoute"
        ack.error.message = reason
        sender.full_ack(ack.SerializeToString(), self._token)

    def _on_acks(self, peer: bytes, frames: Multipart, now: float) -> None:
        groups = split_acks(frames, self.limits)
        receiver = self._identities.get(peer)
        if receiver is None:
            # The acks are dropped: their senders retry, and the receiver's deduper
            # answers the retry with the same outcome once it said HELLO again.
            raise RemoteProtocolError("ACK before HELLO", code=NOT_REGISTERED)
        self._liveness.seen(peer, now)
        routing = self._routing
        for group in groups:
            origin = group.peer
            if origin not in self._identities:
                continue  # the sender is gone; it will retry through another connection
            out = self._out(origin)
            ok_ids = group.ok_ids
            if ok_ids:
                routing.on_acks(peer, ok_ids)
                out.acks(ok_ids, receiver)  # one call per group, not one per id
            for raw in group.full:
                out.full_ack(raw, receiver)
            self.stats.acks_forwarded += len(group.ok_ids) + len(group.full)
        # Full acks free credit too; their ids are inside the protobuf, which the hub
        # does not parse: a full ack is rare (errors, responses), and sticky entries
        # expire, so the credit comes back either way.

    # ------------------------------------------------------------------ sending

    def _out(self, peer: bytes) -> Outbox:
        assert self._listener is not None
        return self._listener.outbox(peer)

    def _refuse(self, peer: bytes, exc: RemoteProtocolError) -> None:
        self.stats.refused[exc.code] += 1
        log.warning("refused input from peer %s: %s", peer.hex(), exc)
        try:
            self._out(peer).control(refusal_for(exc))
        except Exception:  # a refusal must never become a second failure
            log.exception("could not send a refusal to %s", peer.hex())

    def _on_unroutable(self, peer: bytes, lost: list[Multipart]) -> None:
        self._forget(peer, f"unreachable ({len(lost)} multiparts dropped; senders retry)")

    def _forget(self, peer: bytes, why: str) -> None:
        inst = self._routing.unregister(peer)
        self._identities.pop(peer, None)
        self._liveness.remove(peer)
        if self._listener is not None:
            self._listener.forget(peer)
        if inst is not None:
            log.info("instance %s left: %s", inst.identity, why)

    # ------------------------------------------------------------------ timers

    def _timer_for_liveness(self) -> None:
        if self._timer is not None:
            self._timer.at(self._liveness.next_deadline())

    def _tick(self) -> None:
        assert self._loop is not None
        assert self._timer is not None
        now = self._loop.time()
        for action in self._liveness.tick(now):
            if isinstance(action, SendHeartbeat):
                self._out(action.peer).control(encode_heartbeat())
            elif isinstance(action, PeerDead):
                self.stats.dead_peers += 1
                self._forget(action.peer, f"silent for {action.silence:.1f} s")
        self._routing.tick(now)
        self._timer.at(now + _HOUSEKEEPING)
        self._timer_for_liveness()


def _hub_ack(
    message_id: bytes, outcome: envelope_pb2.Outcome.ValueType, hub: Identity
) -> envelope_pb2.Ack:
    ack = envelope_pb2.Ack(message_id=message_id, outcome=outcome)
    ack.receiver.service = hub.service
    ack.receiver.instance = hub.instance
    return ack


async def serve(bind: Sequence[str], *, name: str = "hub", heartbeat: float = 1.0) -> None:
    """Run a hub until SIGINT or SIGTERM; print one ``listening on`` line when ready.
    Raises :class:`~ackbus.errors.AddressError` before that line if it cannot bind."""
    import signal

    loop = asyncio.get_running_loop()
    async with Hub(bind, name=name, heartbeat=heartbeat) as hub:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(hub.close()))
        print(f"ackbus hub {hub.identity} listening on {' '.join(hub.addresses)}", flush=True)
        await hub.serve_forever()


if __name__ == "__main__":  # python -m ackbus.hub ... is ackbus hub ...
    import sys

    from .cli import main

    sys.exit(main(["hub", *sys.argv[1:]]))
