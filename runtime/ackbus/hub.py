"""The hub: a router that keeps no durable message state.

Endpoints connect DEALER links to a hub's ROUTER listener and say HELLO with the
types they handle. The hub routes each MESSAGE item by the fixed header alone (type,
recipient, kind, id) to one live instance, forwards acknowledgements back to the
sender, and answers events with a ROUTED notice naming the services they went to.
It never parses an envelope or a body, never stores a message (it holds those waiting
for an instance with room in memory only) and never retries: reliability is end to
end, so a hub can be killed and restarted (or run beside others) and nothing is lost:
endpoints reconnect, say HELLO again and retry.

Bad input from a peer is counted, logged and answered with a REFUSAL naming the
reason; it never stops the hub.

Run it embedded (``async with Hub(bind="tcp://127.0.0.1:5555") as hub``) or
standalone (``ackbus hub --bind tcp://127.0.0.1:5555``); same code.

Flow control: an instance is sent at most its ``max_concurrency`` (from its HELLO)
messages it has not answered; the rest wait in the hub's memory, at most ``max_held``
per service, by priority (docs/protocol.md, "Flow control at the hub").

With ``keys=DIR`` (``ackbus hub --keys DIR``) the hub is a CURVE server with the keypair
``DIR/hub.key_secret`` and admits only clients whose public key is in ``DIR/clients/``;
any other is refused in the ZeroMQ handshake, before it can say anything
(docs/security.md). Without keys a hub listens only on this host (loopback ``tcp://``,
``ipc://``, ``inproc://``, ``inmem://``) unless told ``insecure=True``: an exposed
address without keys is an :class:`~ackbus.errors.InsecureBindError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import math
import os
import resource
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import zmq
from google.protobuf.message import DecodeError

from . import envelope_pb2, wire_pb2
from ._access import Access
from ._admin import Admin
from ._throttle import Throttle, held_back
from ._timer import Timer
from ._types import Identity
from .core import Instance, Outcome, RemoteError, RoutingTable
from .core.hub_protocol import HubProtocol, HubStats
from .errors import AccessFileError, ClosedError, InsecureBindError, RemoteProtocolError
from .transport import Backend, DefaultBackend, Listener, TransportOptions, ZmqBackend
from .transport._address import exposed
from .transport._keys import HubKeys, KeyGate
from .wire import (
    BODY_VERSION,
    DEFAULT_LIMITS,
    FLAG_ZSTD,
    LIMIT,
    METHOD_VERSION,
    NOT_REGISTERED,
    ZSTD,
    Command,
    Limits,
    MessageItem,
    Multipart,
    Outbox,
    PackedRun,
    Routed,
    codecs,
    decode_admin_request,
    decode_bye,
    decode_command,
    decode_heartbeat,
    decode_hello,
    encode_full_ack,
    encode_heartbeat,
    encode_identity,
    encode_routed,
    encode_welcome,
    negotiate,
    plain_item,
    refusal_for,
    scan_messages,
    split_acks,
)

__all__ = ["Hub", "HubStats"]

_CODECS = codecs()
"""What this hub decompresses, so takes compressed (its WELCOME says): zstd if zstandard
is installed. A hub must decompress for receivers that cannot."""

log = logging.getLogger("ackbus.hub")


class Hub:
    """A stateless router between endpoints. Use as an async context manager.

    The decisions are :class:`~ackbus.core.hub_protocol.HubProtocol`'s; this class
    binds the sockets, decodes input and encodes the protocol's actions with the wire.
    """

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
        keys: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        max_peers: int = 10_000,
        stall_limit: float = 60.0,
        access: str | os.PathLike[str] | None = None,
        max_held: int = 10_000,
        max_instances_per_key: int | None = None,
    ) -> None:
        self._bind = [bind] if isinstance(bind, str) else list(bind)
        if keys is None:
            open_to_all = [address for address in self._bind if exposed(address)]
            if open_to_all and not insecure:
                raise InsecureBindError(open_to_all)
            if open_to_all:
                log.warning(
                    "hub %s listens on %s without keys (insecure=True): anyone who reaches "
                    "it may register as any service",
                    name,
                    ", ".join(open_to_all),
                )
        self.identity = Identity(name, uuid.uuid4().hex)
        self._token = encode_identity(name, self.identity.instance)
        """The hub's own identity as an ack group names it (on no-route acks)."""
        self.heartbeat = heartbeat
        if max_instances_per_key is not None:
            limits = replace(limits, max_instances_per_key=max_instances_per_key)
        self.limits = limits
        self._proto: HubProtocol[MessageItem, PackedRun, bytes] = HubProtocol(
            self,
            heartbeat=heartbeat,
            misses=misses,
            grace=grace,
            stall_limit=stall_limit,
            max_held=max_held,
        )
        self._proto.identity = self.identity
        self.stats: HubStats = self._proto.stats
        self.routed_by_type: Counter[str] | None = None
        """Items forwarded by type, once :meth:`count_types` was called (else None)."""
        self._options = options or TransportOptions()
        if self._options.max_msgsize < 0:  # a bigger frame is never read, only refused
            self._options = replace(self._options, max_msgsize=limits.max_frame_bytes)
        if self._options.handshake_ms <= 0:  # a silent connection frees its descriptor
            self._options = replace(self._options, handshake_ms=HANDSHAKE_MS)
        if self._options.on_accept_failed is None:
            self._options = replace(self._options, on_accept_failed=self._on_accept_failed)
        self.max_peers = max_peers
        """Most instances registered at once; a HELLO beyond is refused (LIMIT)."""
        self._context: zmq.Context[Any] | None = None
        """A ZeroMQ context of the hub's own (with keys: ZAP is per context)."""
        self._gate: KeyGate | None = None
        if keys is not None:
            hub_keys = HubKeys.load(keys)  # a missing or bad file fails here, naming it
            if backend is None:
                self._context = zmq.Context()
                backend = DefaultBackend(self._context)
            self._gate = KeyGate(_zmq_context(backend), hub_keys, self._on_key_refused)
            # Each multipart with its connection's key name: a registration is bound to
            # the key it was made with, and the access file judges by it.
            self._options = replace(self._options, curve=hub_keys.keypair, user_ids=True)
        self._access_path = access
        if access is not None:
            if keys is None:
                raise AccessFileError(
                    str(access),
                    "",
                    "an access file needs keys (keys=DIR, --keys DIR): without CURVE a "
                    "connection has no key to judge",
                )
            rules = Access.load(access)  # a bad file fails here, naming file and line
            self._warn_unenrolled(rules)
            self._proto.set_access(rules)
        self._backend = backend or DefaultBackend()
        self._version = 0
        """The protocol version negotiated with the peer saying HELLO."""
        self._next_trim = 0.0
        self._trimming: asyncio.Future[object] | None = None
        self._refusals = Throttle()
        """One refusal line per code per minute (:meth:`_refuse`)."""
        self._accept_failures = Throttle()
        """One line a minute while connections cannot be accepted (out of descriptors)."""
        self._key_limits = Throttle()
        """One line per CURVE key per minute about its instances beyond the limit."""
        self._registered_lines: dict[bytes, tuple[Identity, int, int]] = {}
        """The last "registered" line written per peer (a repeated HELLO writes none)."""
        self.announce = True
        """Log a "listening on" line when started (``ackbus hub`` prints its own)."""
        self._notices: list[Routed] = []
        """ROUTED entries of the multipart being routed, sent together at its end."""
        self._listener: Listener | None = None
        self._timer: Timer | None = None
        self._slot = self._proto.heartbeat / HEARTBEAT_SLOTS
        """The timer's granularity, seconds (see HEARTBEAT_SLOTS)."""
        self._closed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._admin = Admin(self, self._proto, self._send_once, self._now)
        """``ackbus status`` and ``tail``: what the hub keeps for them, and its answers."""

    @property
    def grace(self) -> float:
        """Seconds after start during which retries are answered retry-later."""
        return self._proto.grace

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Hub:
        """Bind and start routing. :class:`~ackbus.errors.AddressError` if an address
        cannot be bound (in use, malformed); then nothing stays bound or open."""
        if self._listener is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self._timer = Timer(self._loop, self._tick)
        try:
            if self._gate is not None:  # before binding: no handshake without ZAP
                self._gate.start()
            self._listener = self._backend.bind(
                self._bind,
                on_receive=self._on_receive,
                on_unroutable=self._on_unroutable,
                options=self._options,
            )
        except BaseException:
            self._release_keys()
            raise
        self._proto.start(self._loop.time())
        self._arm_timer()
        if self.announce:
            log.info("hub %s listening on %s", self.identity, ", ".join(self.addresses))
        return self

    def reload_access(self) -> bool:
        """Read the access file again (``ackbus hub`` does on SIGHUP): its rules apply
        from now on, connections stay, and a registered instance they no longer allow is
        told so (its next HELLO is judged anew). A file that cannot be used is logged and
        the rules read before stay in force (False)."""
        if self._access_path is None:
            return False
        try:
            rules = Access.load(self._access_path)
        except AccessFileError as exc:
            log.error("access file not reloaded, the rules read before stay: %s", exc)
            return False
        self._warn_unenrolled(rules)
        self._proto.set_access(rules)
        log.info("access file %s reloaded: %d client keys", rules.path, len(rules.grants))
        return True

    def _warn_unenrolled(self, rules: Access) -> None:
        names = set(self._gate.keys.enrolled().values()) if self._gate is not None else set()
        for key in sorted(set(rules.grants) - names):
            log.warning(
                "access file %s names key %r, which is not enrolled in the clients/ folder",
                rules.path,
                key,
            )

    @property
    def enrolled(self) -> int | None:
        """How many client keys a hub with ``keys=`` admits (None without keys)."""
        return self._gate.enrolled if self._gate is not None else None

    @property
    def addresses(self) -> tuple[str, ...]:
        """The bound addresses (a port 0 resolved to the real port)."""
        if self._listener is None:
            raise ClosedError("hub not started")
        return self._listener.addresses

    @property
    def routing(self) -> RoutingTable:
        return self._proto.routing

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the hub runs on (once started)."""
        if self._loop is None:
            raise ClosedError("hub not started")
        return self._loop

    def status(self) -> dict[str, Any]:
        """The hub's view as ``ackbus status`` and the status page show it (a JSON
        object: docs/operations.md). Call it on the hub's event loop."""
        return self._admin.status(self._now())

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _send_once(self) -> Callable[[bytes, list[bytes]], bool] | None:
        return self._listener.send_once if self._listener is not None else None

    def stalled_peers(self) -> dict[bytes, float]:
        """Silent instances kept registered because their connection is up (peer → since
        when, loop time): see :class:`~ackbus.core.hub_protocol.HubProtocol`."""
        return self._proto.stalled_peers()

    async def close(self) -> None:
        """Stop listening and release the sockets. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
        if self._listener is not None:
            self._listener.close()
        self._release_keys()
        if self._trimming is not None and not self._trimming.done():
            with contextlib.suppress(Exception):  # it only gives memory back
                await asyncio.wait_for(self._trimming, 5.0)
        self._closed.set()

    def _release_keys(self) -> None:
        if self._gate is not None:
            self._gate.stop()
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

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
        keyed = self._options.user_ids
        keys = self._proto.keys
        key: str | None = None
        for mp in multiparts:
            peer = mp[0]
            if keyed:  # [peer, key name, *frames]: the key of the connection it came on
                key = mp[1].decode()
                frames = mp[2:]
                bound = keys.get(peer)
                if bound is not None and bound != key:
                    # Its routing id came back on another connection, with another key
                    # (the first one closed): the registration was the old key's.
                    self._proto.forget(peer, f"its routing id came back with key {key!r}")
            else:
                frames = mp[1:]
            try:
                self._handle(peer, frames, now, key)
            except RemoteProtocolError as exc:
                self._refuse(peer, exc)
        if self._admin.tap is not None:  # once per batch: someone tails
            self._admin.flush()
        self._arm_timer()

    def _handle(self, peer: bytes, frames: Multipart, now: float, key: str | None) -> None:
        cmd = decode_command(frames)
        proto = self._proto
        if cmd is Command.MESSAGE:
            items = scan_messages(frames, self.limits)
            if self._admin.tap is not None:
                self._admin.tap.arrived(peer, items)
            first = items[0] if items else None
            first_id = first.ids[0] if isinstance(first, PackedRun) else first.id if first else b""
            proto.begin(peer, first_id, now)
            for item in items:
                if isinstance(item, PackedRun):
                    proto.route_run(peer, item, now)
                else:
                    proto.route(peer, item, now)
            if self._notices:
                notices, self._notices = self._notices, []
                self._out(peer).control(encode_routed(notices))
        elif cmd is Command.ACK:
            groups = split_acks(frames, self.limits)
            proto.acks(peer, groups, now)
            self._admin.acked(peer, sum(len(g.ok_ids) + len(g.full) for g in groups))
        elif cmd is Command.HEARTBEAT:
            decode_heartbeat(frames)
            proto.heard(peer, now)
        elif cmd is Command.HELLO:
            self._on_hello(peer, frames, now, key)
        elif cmd is Command.BYE:
            decode_bye(frames, self.limits)
            proto.forget(peer, "said bye")
        elif cmd is Command.ADMIN:
            self._admin.request(peer, decode_admin_request(frames, self.limits), key)
        else:
            raise RemoteProtocolError(f"{cmd.name} is not a command a hub accepts")

    def _on_hello(self, peer: bytes, frames: Multipart, now: float, key: str | None) -> None:
        hello = decode_hello(frames, self.limits)
        proto = self._proto
        if proto.peer_count >= self.max_peers and not proto.registered(peer):
            raise RemoteProtocolError(
                f"this hub has {proto.peer_count} instances registered, its limit "
                f"(max_peers); connect to another hub or raise it",
                code=LIMIT,
            )
        self._version = negotiate(list(hello.versions))
        identity = Identity(hello.identity.service, hello.identity.instance)
        token = encode_identity(identity.service, identity.instance)
        if key:
            self._check_key_limit(peer, token, key, identity)
        out = self._out(peer)
        out.limit_batch(hello.max_batch)  # no bigger batches than the peer accepts
        out.body_frames = self._version >= BODY_VERSION  # else big bodies are joined to items
        out.zstd = ZSTD in hello.codecs  # else compressed bodies are decompressed for it
        # A peer of version 2 also declares the rpcs it handles: routed by name, as
        # types are (an rpc name has a '/', which no type name has).
        commands: Sequence[str] = hello.commands
        if self._version >= METHOD_VERSION and hello.methods:
            commands = [*commands, *hello.methods]
        drifts = self._proto.hello(
            peer,
            identity,
            token,
            commands,
            hello.events,
            hello.max_concurrency,
            hello.heartbeat_ms,
            now,
            hello.implements,
            key,
            hello.fingerprints,
        )
        for drift in drifts:  # each type and pair of fingerprints once (core/drift.py)
            log.warning(
                "schema drift on %s: %s has fingerprint %s, %s has %s; their generated "
                "code disagrees on this type (regenerate one of them, or see `ackbus "
                "breaking`)",
                drift.msg_type,
                drift.peer,
                drift.fingerprint.hex(),
                drift.other,
                drift.other_fingerprint.hex(),
            )
        self._admin.hello(peer, hello.agent, self._version)
        # A HELLO is said again on every reconnect and type change: one line for what
        # is new, not one per HELLO.
        said = (identity, len(hello.commands), len(hello.events))
        if self._registered_lines.get(peer) != said:
            self._registered_lines[peer] = said
            log.info(
                "registered %s: %d command types, %d event types",
                identity,
                len(hello.commands),
                len(hello.events),
            )

    def _check_key_limit(self, peer: bytes, token: bytes, key: str, identity: Identity) -> None:
        """Refuse (LIMIT) a HELLO that would register one more instance of ``key`` than
        ``limits.max_instances_per_key`` allows; a line per key per minute says so."""
        limit = self.limits.max_instances_per_key
        proto = self._proto
        if not limit or proto.instances_of(key) < limit:
            return
        if not proto.adds_instance(peer, token, key):
            return
        self.stats.key_limit += 1
        allowed = self._key_limits.allow(key)
        if allowed is not None:
            held = allowed[1]
            more = held_back(held, "refused")
            log.warning(
                "refused instance %s: key %r has %d instances registered, its limit "
                "(max_instances_per_key, --max-instances-per-key)%s",
                identity,
                key,
                limit,
                more,
            )
        raise RemoteProtocolError(
            f"key {key!r} has {limit} instances registered, its limit "
            f"(max_instances_per_key); stop one, or raise the limit",
            code=LIMIT,
        )

    # ------------------------------------------------------------------ the protocol's actions
    # (HubIO: what the protocol decided, encoded with the wire and sent)

    def count_types(self) -> None:
        """Count the items forwarded by type from now on (:attr:`routed_by_type`, which
        ``ackbus.metrics`` exports): a dict increment per item, off until asked for."""
        if self.routed_by_type is None:
            self.routed_by_type = Counter()

    def forward(self, target: bytes, item: MessageItem, origin: bytes) -> None:
        out = self._out(target)
        if item.flags & FLAG_ZSTD and not out.zstd:  # a receiver that cannot decompress
            frame, body = plain_item(item.frame, item.body_frame, self.limits.max_message_bytes)
            out.message(frame, origin, body)
        else:
            out.message(item.frame, origin, item.body_frame)
        if self.routed_by_type is not None:
            self.routed_by_type[item.type] += 1

    def forward_run(self, run: PackedRun, targets: Sequence[bytes], origin: bytes) -> None:
        """Each target's share of the run as one chunk of the bytes it arrived in."""
        if self.routed_by_type is not None:
            self.routed_by_type[run.type] += len(targets)
        first = targets[0]
        if targets.count(first) == len(targets):  # one instance, or all picked the same
            self._out(first).packed(run.chunk(), len(targets), origin)
            return
        for target, chunk, count in run.stretches(targets):
            self._out(target).packed(chunk, count, origin)

    def routed(
        self,
        origin: bytes,
        msg_id: bytes,
        services: tuple[str, ...],
        implements: tuple[tuple[str, ...], ...],
    ) -> None:
        self._notices.append(Routed(msg_id, services, implements))

    def no_route(self, origin: bytes, msg_id: bytes, reason: str, attempt: int) -> None:
        error = RemoteError("NoRoute", reason)
        ack = encode_full_ack(
            msg_id, Outcome.NO_ROUTE, receiver=self.identity, error=error, attempt=attempt
        )
        self._out(origin).full_ack(ack, self._token)

    def retry_later(self, origin: bytes, msg_id: bytes, after: float, attempt: int) -> None:
        ack = encode_full_ack(
            msg_id,
            Outcome.RETRY_LATER,
            receiver=self.identity,
            retry_after=max(after, 0.001),
            attempt=attempt,
            deferred=True,
        )
        self._out(origin).full_ack(ack, self._token)

    def held(self, origin: bytes, msg_id: bytes, attempt: int, lease: float) -> None:
        ack = encode_full_ack(
            msg_id, Outcome.HELD, receiver=self.identity, retry_after=lease, attempt=attempt
        )
        self._out(origin).full_ack(ack, self._token)

    def settled(self, full: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Parses the full acks (the rare path: errors, responses, notices)."""
        ended: list[bytes] = []
        running: list[bytes] = []
        for raw in full:
            try:
                ack = envelope_pb2.Ack.FromString(raw)
            except DecodeError:
                continue  # forwarded unread as ever; its sender will make sense of it
            (running if ack.outcome == envelope_pb2.IN_PROGRESS else ended).append(ack.message_id)
        return ended, running

    def split(self, run: PackedRun) -> list[MessageItem]:
        return run.items(self.limits)

    def forward_acks(
        self, origin: bytes, ok_ids: Sequence[bytes], full: Sequence[bytes], receiver: bytes
    ) -> None:
        out = self._out(origin)
        if ok_ids:
            out.acks(ok_ids, receiver)  # one call per group, not one per id
        for raw in full:
            out.full_ack(raw, receiver)

    def refused(self, origin: bytes, msg_id: bytes, code: str, reason: str) -> None:
        self._refuse(origin, RemoteProtocolError(reason, code=code, message_id=msg_id))

    def send_welcome(self, peer: bytes, heartbeat_ms: int) -> None:
        welcome = wire_pb2.Welcome(
            heartbeat_ms=heartbeat_ms,
            version=self._version,
            max_batch=self.limits.max_batch,
            codecs=_CODECS,
        )
        welcome.hub.service = self.identity.service
        welcome.hub.instance = self.identity.instance
        self._out(peer).control(encode_welcome(welcome))

    def send_heartbeat(self, peer: bytes) -> None:
        self._out(peer).control(encode_heartbeat())

    def forgotten(
        self, peer: bytes, instance: Instance | None, why: str, tell: bool = False
    ) -> None:
        if self._listener is not None:
            self._listener.forget(peer)
            if tell:  # its connection may be up: it says HELLO again when told
                notice = RemoteProtocolError(f"forgotten by the hub: {why}", code=NOT_REGISTERED)
                self._listener.send_once(peer, refusal_for(notice))
        self._admin.forgot(peer)
        self._registered_lines.pop(peer, None)
        if instance is not None:
            log.info("instance %s left: %s", instance.identity, why)

    def connected(self, peer: bytes) -> bool:
        # A heartbeat as the probe: libzmq refuses it (ROUTER_MANDATORY) once the
        # peer's connection dropped: at once when its process dies (the kernel resets
        # it), after TCP_MAXRT when its host is gone (what we send goes unacknowledged).
        return self._listener is not None and self._listener.reachable(peer, encode_heartbeat())

    def stalled(self, peer: bytes, instance: Instance | None, silence: float, up: bool) -> None:
        name = instance.identity if instance is not None else peer.hex()
        # A peer that handles nothing (a sender, a legacy socket between calls) blocks
        # no delivery by being silent: only worth a debug line.
        level = (
            logging.WARNING
            if instance and (instance.commands or instance.events)
            else logging.DEBUG
        )
        if up:
            log.log(
                level,
                "instance %s silent for %.1f s but its connection is up: stalled (a handler "
                "blocking its event loop?); kept registered, new messages go to other "
                "instances while there are any, forgotten if its connection drops or after "
                "%.0f s",
                name,
                silence,
                self._proto.stall_limit,
            )
        else:
            log.log(level, "instance %s speaks again after %.1f s stalled", name, silence)

    # ------------------------------------------------------------------ sending

    def _out(self, peer: bytes) -> Outbox:
        assert self._listener is not None
        return self._listener.outbox(peer)

    def _refuse(self, peer: bytes, exc: RemoteProtocolError) -> None:
        self.stats.refused[exc.code] += 1
        self._admin.refused(peer, exc)
        allowed = self._refusals.allow(exc.code)  # a flood of refusals writes a line a minute
        if allowed is not None:
            held = allowed[1]
            more = held_back(held, f"{exc.code} refusals")
            log.warning("refused input from peer %s: %s%s", peer.hex(), exc, more)
        try:
            if self._proto.registered(peer):
                self._out(peer).control(refusal_for(exc))
            elif self._listener is not None:  # no outbox (no state) for a stranger
                self._listener.send_once(peer, refusal_for(exc))
        except Exception:  # a refusal must never become a second failure
            log.exception("could not send a refusal to %s", peer.hex())

    def _on_accept_failed(self, error: int) -> None:
        """The listener could not accept a connection (its socket monitor said so): out
        of file descriptors is counted and logged a line a minute, with what to do; the
        hub goes on, and accepts again once descriptors are free (libzmq retries while
        the connection waits)."""
        if error not in (errno.EMFILE, errno.ENFILE):
            log.debug("hub could not accept a connection: %s", os.strerror(error))
            return
        self.stats.out_of_descriptors += 1
        allowed = self._accept_failures.allow(errno.errorcode.get(error, str(error)))
        if allowed is None:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        held = allowed[1]
        more = held_back(held, "failed accepts")
        which = "this process" if error == errno.EMFILE else "the system (ENFILE)"
        log.error(
            "hub %s is out of file descriptors: %s cannot open more, so new connections "
            "wait unaccepted (open files limit RLIMIT_NOFILE: soft %s, hard %s). Raise it "
            "(ulimit -n, LimitNOFILE= in a systemd unit) or lower max_peers; idle "
            "connections that never complete the handshake are dropped after %.0f s%s",
            self.identity,
            which,
            _limit(soft),
            _limit(hard),
            self._options.handshake_ms / 1000,
            more,
        )

    def _on_key_refused(self) -> None:
        self.stats.unauthenticated += 1

    def _on_unroutable(self, peer: bytes, lost: list[Multipart]) -> None:
        self._proto.forget(peer, f"unreachable ({len(lost)} multiparts dropped; senders retry)")

    # ------------------------------------------------------------------ timers

    def _arm_timer(self) -> None:
        if self._timer is not None:
            when = self._proto.next_deadline()
            if when is not None:
                # Up to the next slot: the heartbeats of a thousand peers, each due at
                # its own instant, go out in HEARTBEAT_SLOTS wake-ups per interval.
                slot = self._slot
                when = max(when, math.ceil(when / slot) * slot)
            self._timer.at(when)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._proto.tick(now)
        self._admin.tick(now)
        if now >= self._next_trim and (self._trimming is None or self._trimming.done()):
            self._next_trim = now + TRIM_EVERY
            # In a thread: ctypes lets go of the GIL, so the loop goes on routing while
            # glibc walks its heap (about 10 ms on a fragmented 100 MB one).
            self._trimming = self._loop.run_in_executor(None, _trim)
        self._arm_timer()


HEARTBEAT_SLOTS = 20
"""The hub's timer wakes at most this many times per heartbeat interval (every 50 ms at
the default 1 s): what falls due between two slots waits for the next one, so a thousand
peers' heartbeats cost twenty wake-ups, not a thousand. Nothing on a message's path waits
on this timer (the hub forwards as it reads); held-message notices and sweeps, which do,
are per interval anyway."""
HANDSHAKE_MS = 5000
"""A hub drops a connection that has not completed ZeroMQ's handshake after this long."""
TRIM_EVERY = 10.0
"""Seconds between the hub's requests that the C allocator give freed memory back."""


def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is none (musl, macOS).

    Each connection costs libzmq's I/O thread buffers that it frees when the connection
    closes; glibc keeps freed memory for reuse, so a burst of connections (10,000
    garbage ones: issue 18) left the hub's RSS about 7 MiB higher for good, the same
    whether the peers sent anything or not. Trimming every ``TRIM_EVERY`` seconds gives
    it back (30.8 MiB before such a burst, 31.1 after)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_trim = _malloc_trim()


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _zmq_context(backend: Backend) -> zmq.Context[Any]:
    """The ZeroMQ context a hub's listener sockets will live in (its ZAP handler's)."""
    if isinstance(backend, DefaultBackend):
        return backend.zmq.context
    if isinstance(backend, ZmqBackend):
        return backend.context
    raise TypeError("keys= needs a ZeroMQ backend (DefaultBackend or ZmqBackend)")


if __name__ == "__main__":  # python -m ackbus.hub ... is ackbus hub ...
    import sys

    from .cli import main

    sys.exit(main(["hub", *sys.argv[1:]]))
