"""The endpoint: one per service instance; sends, receives, acknowledges.

An endpoint connects a link to each hub, says HELLO with the types its handlers take,
and then

* sends: every message gets a 16-byte id and is tracked by the core
  :class:`~ackbus.core.OutboundTracker` until an ack settles it or its attempts or
  deadline run out; retries re-send the same frame with a new attempt number;
* receives: every message passes the core :class:`~ackbus.core.InboundDeduper` (a
  duplicate is re-acknowledged without running the handler), runs its handler
  (eagerly, see :mod:`ackbus._eager`), and is acknowledged only after the handler
  returned.

All timers of all messages share one ``loop.call_at`` handle armed at the earliest
deadline the core machines report. Time inside is the loop's monotonic clock; reports
and contexts carry Unix time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, TypeVar, overload

from google.protobuf import json_format
from google.protobuf.message import Message

from . import envelope_pb2, wire_pb2
from ._dispatch import Dispatcher, Route
from ._eager import report_when_done, start_eager
from ._timer import Timer
from ._types import (
    Context,
    DeliveryReport,
    DeliveryStatus,
    Handler,
    Identity,
    Kind,
    Policy,
    Registry,
    Untyped,
)
from ._untyped import encode_untyped
from ._window import WindowLines
from .core import Completion, Outcome, RemoteError
from .core.endpoint_protocol import AckReply, EndpointProtocol, EndpointStats
from .errors import (
    ClosedError,
    ConnectTimeout,
    DeliveryError,
    Reject,
    RemoteProtocolError,
    RetryLater,
    SendWindowTimeout,
)
from .store import Store
from .store._durable import Durable
from .transport import Backend, DefaultBackend, Link, TransportOptions
from .wire import (
    DEFAULT_LIMITS,
    FLAG_REQUEST,
    KIND_COMMAND,
    KIND_EVENT,
    PROTOCOL_VERSION,
    Command,
    IdSource,
    Limits,
    MessageItem,
    Multipart,
    check_name,
    decode_bye,
    decode_command,
    decode_heartbeat,
    decode_identity,
    decode_messages,
    decode_refusal,
    decode_routed,
    decode_welcome,
    encode_bye,
    encode_heartbeat,
    encode_hello,
    pack_item,
    reattempt,
    refusal_for,
    split_acks,
)
from .wire._control import AckGroup

__all__ = ["Endpoint", "EndpointStats"]

log = logging.getLogger("ackbus.endpoint")

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)

_DEFAULT_POLICY = Policy()
JSON_ENCODING = "json"
"""``Envelope.content_encoding`` of a body that is a JSON object (untyped messages)."""
_DEAD_LETTERS = 1000
"""Failed reports kept in memory (the durable store keeps all)."""
_ENVELOPE_CACHE = 1024
"""Distinct sender envelopes a receiver keeps parsed (one per sending instance), and
distinct type names a sender keeps checked."""
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
"""The headers of a message that has none: one shared read-only mapping."""


class _HubLink:
    """One hub connection (its state lives in the protocol, under ``index``)."""

    __slots__ = ("index", "link")

    link: Link

    def __init__(self, index: int) -> None:
        self.index = index


class Endpoint:
    """A service instance on the bus. Use as ``async with Endpoint(...) as ep``.

    ``service`` names the service (all its instances share it); ``hubs`` are the hub
    addresses to connect to. ``instance`` defaults to a fresh unique id. ``policy``
    applies to messages whose type has no policy in ``registry`` (generated modules
    export a ``REGISTRY``; generated clients pass their policy themselves).
    ``store`` (``"sqlite:///path.db"`` or an :class:`ackbus.store.Store`) makes it
    durable: outbox, inbox, dead letters and identity survive restarts (docs/durable.md).
    """

    def __init__(
        self,
        service: str,
        hubs: str | Sequence[str],
        *,
        instance: str | None = None,
        policy: Policy = _DEFAULT_POLICY,
        registry: Registry | None = None,
        window: int = 1000,
        credit: int = 1000,
        heartbeat: float = 1.0,
        misses: int = 3,
        connect_timeout: float = 5.0,
        dedupe_capacity: int = 100_000,
        dedupe_ttl: float = 600.0,
        backend: Backend | None = None,
        options: TransportOptions | None = None,
        limits: Limits = DEFAULT_LIMITS,
        seed: int | None = None,
        store: str | Store | None = None,
    ) -> None:
        if not service:
            raise ValueError("an endpoint needs a service name")
        self._hub_addresses = [hubs] if isinstance(hubs, str) else list(hubs)
        if not self._hub_addresses:
            raise ValueError("an endpoint needs at least one hub address")
        # Durable mode (docs/durable.md): the store keeps this instance's identity.
        self._durable = Durable(store, service, instance, dedupe_ttl) if store is not None else None
        if self._durable is not None:
            instance = self._durable.instance
        self.identity = Identity(service, instance or uuid.uuid4().hex)
        self.policy = policy
        self.registry = registry if registry is not None else Registry()
        self.credit = credit
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.limits = limits
        self.dead_letters: deque[DeliveryReport] = deque(maxlen=_DEAD_LETTERS)
        """The latest failed reports (in-memory mode keeps the last 1,000)."""
        self._window = window
        self._proto = EndpointProtocol(
            self.identity,
            self,
            window=window,
            heartbeat=heartbeat,
            misses=misses,
            dedupe_capacity=dedupe_capacity,
            dedupe_ttl=dedupe_ttl,
            seed=seed,
        )
        self.stats: EndpointStats = self._proto.stats
        self._tracker = self._proto.tracker
        self._deduper = self._proto.deduper
        self._dispatch = Dispatcher()
        self._pending: dict[bytes, DeliveryReport] = {}
        """Reports of the messages sent and not settled; a pending report carries its
        frame (no second object per message)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._links: list[_HubLink] = []
        self._backend = backend or DefaultBackend()
        base = options or TransportOptions()
        # A stable routing id lets a restarted hub route acks to us by the token our
        # messages carried before the restart.
        self._options = replace(
            base, routing_id=base.routing_id or self.identity.instance.encode()[:255]
        )
        env = envelope_pb2.Envelope()
        env.sender.service = service
        env.sender.instance = self.identity.instance
        self._envelope = env.SerializeToString()
        self._identities: dict[bytes, Identity] = {}
        self._ids = IdSource()
        self._type_names: dict[str, bytes] = {}
        """Type names this endpoint sent, as checked for the wire (a sender sends few)."""
        self._envelopes: dict[bytes, tuple[Identity, bool]] = {}
        """Parsed header-less envelopes by their bytes (see :meth:`_parse_envelope`)."""
        self._window_waiters = WindowLines(self._window_timeout)
        """Sends waiting for window room, per destination, first come first served."""
        self._welcomed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: Timer | None = None
        self._wall_offset = 0.0
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ registration

    def register(self, handler: Handler) -> None:
        """Register a generated handler object: every ``on_*`` method its class overrides."""
        self._dispatch.add_handler(handler)
        self._types_changed()

    @overload
    def register_handler(
        self,
        msg_type: type[M],
        fn: Callable[[M, Context], Coroutine[Any, Any, Message | None]],
        *,
        kind: Kind | None = None,
        response: type[Message] | None = None,
    ) -> None: ...

    @overload
    def register_handler(
        self,
        msg_type: str,
        fn: Callable[[dict[str, Any], Context], Coroutine[Any, Any, None]],
        *,
        kind: Kind | None = None,
        response: None = None,
    ) -> None: ...

    def register_handler(
        self,
        msg_type: type[M] | str,
        fn: Callable[[Any, Context], Coroutine[Any, Any, Message | None]],
        *,
        kind: Kind | None = None,
        response: type[Message] | None = None,
    ) -> None:
        """Register a plain async function for messages of class ``msg_type``, or by
        type name: ``register_handler("StartHand", fn)`` hands ``fn`` the payload as a
        dict (reachable under the full and the legacy name when the registry knows it).

        ``kind`` defaults to the registry's policy for the type (else command).
        """
        if isinstance(msg_type, str):
            spec = self.registry.get(msg_type)
            names = [msg_type]
            if spec is not None:
                names = sorted({spec.full_name, *([spec.legacy_name] if spec.legacy_name else [])})
            if kind is None:
                kind = spec.policy.kind if spec is not None else Kind.COMMAND
            self._dispatch.add_named(names, fn, kind=kind)
        else:
            if kind is None:
                found = self.registry.for_class(msg_type)
                kind = found.policy.kind if found is not None else Kind.COMMAND
            self._dispatch.add_function(msg_type, fn, kind=kind, response=response)
        self._types_changed()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Endpoint:
        """Connect to every hub and wait until one welcomed us (``ConnectTimeout``)."""
        if self._closed:
            raise ClosedError("endpoint closed")
        if self._started:
            return self
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._wall_offset = self._proto.wall_offset = time.time() - loop.time()
        self._timer = Timer(loop, self._tick)
        try:
            if self._durable is not None:
                await self._durable.start(self, loop)
            for address in self._hub_addresses:
                hub = _HubLink(self._proto.add_hub())
                hub.link = self._backend.connect(
                    address,
                    on_receive=functools.partial(self._on_receive, hub),
                    on_connection=functools.partial(self._on_connection, hub),
                    options=self._options,
                )
                self._links.append(hub)
                self._proto.connected(hub.index, loop.time())
            async with asyncio.timeout(self.connect_timeout):
                await self._welcomed.wait()
        except TimeoutError:
            await self.close()
            raise ConnectTimeout(
                f"{self.identity}: no hub of {self._hub_addresses} answered within "
                f"{self.connect_timeout} s"
            ) from None
        except BaseException:
            # A bad address (AddressError), a store that cannot open, a cancel: release
            # the links and the store opened so far; `async with` never calls __aexit__
            # when __aenter__ raised.
            await self.close()
            raise
        if self._durable is not None:
            self._durable.resume()
        return self

    async def close(self, *, timeout: float = 1.0) -> None:
        """Fail what is pending with :class:`Cancelled`, say BYE and release everything.

        Handlers still running are cancelled (their messages are not acked, so the
        sender retries them elsewhere). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        now = loop.time() if loop is not None else 0.0
        self._proto.close(self._pending, now)
        self._window_waiters.fail(ClosedError(f"{self.identity}: endpoint closed"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if self._timer is not None:
            self._timer.cancel()
        for hub in self._links:
            if self._proto.welcomed(hub.index):
                hub.link.outbox.control(encode_bye("closing"))
            hub.link.close()
        self._links.clear()
        if self._durable is not None:
            await self._durable.close()

    async def __aenter__(self) -> Endpoint:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Messages sent and not yet settled."""
        return len(self._pending)

    @property
    def store(self) -> Store | None:
        """The durable store, or ``None`` in memory mode."""
        return self._durable.store if self._durable is not None else None

    @property
    def resumed(self) -> list[DeliveryReport]:
        """Reports of the messages a previous run left in the store's outbox, sent
        again by :meth:`start` (empty in memory mode)."""
        return self._durable.resumed if self._durable is not None else []

    # ------------------------------------------------------------------ sending

    # send and publish are plain functions returning _send's coroutine, which the caller
    # awaits: the same as ``async def`` to every caller, without a second coroutine
    # object per send (for the garbage collector to walk while sends wait: measured,
    # docs/performance.md) and a second frame to resume.

    def send(
        self,
        msg: Message | Untyped,
        *,
        wait_ack: bool = True,
        timeout: float | None = None,
        to: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
    ) -> Coroutine[Any, Any, DeliveryReport]:
        """Send a command (await it). With ``wait_ack`` (the default) return once it
        was acked or failed; otherwise at once, with a pending report to ``await
        report.wait()``.

        ``timeout`` caps the message's whole life (its deadline); the report is never
        pending after it. Raises :class:`SendWindowTimeout` if the in-flight window
        stayed full that long, :class:`ClosedError` after :meth:`close`.
        """
        return self._send(
            msg, KIND_COMMAND, wait_ack, timeout, to, priority, headers, policy, False
        )

    def publish(
        self,
        event: Message | Untyped,
        *,
        wait_ack: bool = True,
        timeout: float | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
    ) -> Coroutine[Any, Any, DeliveryReport]:
        """Publish an event to one instance of every service subscribed to its type
        (await it). Acked once every such service acked (at once if none subscribes)."""
        return self._send(
            event, KIND_EVENT, wait_ack, timeout, None, priority, headers, policy, False
        )

    async def request(
        self,
        msg: Message,
        response_type: type[R],
        *,
        timeout: float | None = None,
        to: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
    ) -> R:
        """Send a command whose handler returns a ``response_type``; return the response.
        Raises the :class:`DeliveryError` of the failed report."""
        report = await self._send(
            msg, KIND_COMMAND, True, timeout, to, priority, headers, policy, True
        )
        report.raise_for_status()
        response = response_type()
        try:
            response.ParseFromString(report.response or b"")
        except Exception as exc:
            raise RemoteProtocolError(
                f"undecodable {response_type.DESCRIPTOR.full_name} response: {exc}",
                message_id=report.message_id,
            ) from None
        return response

    async def _send(
        self,
        msg: Message | Untyped,
        kind: int,
        wait_ack: bool,
        timeout: float | None,
        to: str | None,
        priority: int | None,
        headers: Mapping[str, str] | None,
        policy: Policy | None,
        request: bool,
    ) -> DeliveryReport:
        if self._closed or not self._started:
            raise ClosedError(
                f"{self.identity}: endpoint is {'closed' if self._closed else 'not started'}"
            )
        loop = self._loop
        assert loop is not None
        if isinstance(msg, Untyped):
            msg_type, body, json_body, pol = self._untyped(msg, policy)
        else:
            msg_type, body, json_body = msg.DESCRIPTOR.full_name, msg.SerializeToString(), False
            if policy is not None:  # generated clients pass their type's policy
                pol = policy
            else:
                spec = self.registry.for_class(type(msg))
                pol = spec.policy if spec is not None else self.policy
        if timeout is not None:
            if not timeout > 0:
                raise ValueError(f"timeout must be > 0, got {timeout}")
            if timeout < pol.deadline:  # else the copy would equal pol
                pol = pol.with_(deadline=timeout)
        if priority is not None and priority != pol.priority:
            pol = pol.with_(priority=priority)
        destination = to or msg_type
        lines = self._window_waiters
        durable = self._durable
        waited = destination in lines.lines or (
            self._tracker.in_flight(destination) >= self._window
        )
        if waited:
            # Wait in line for a slot (_window.py); the future is awaited here, not in
            # a coroutine of its own: one object fewer per waiting send.
            deadline = loop.time() + pol.deadline
            front = False
            while True:
                fut = lines.enter(destination, deadline, loop, front=front)
                try:
                    await fut
                except BaseException:
                    lines.leave(destination, fut)
                    raise
                # Woken for a settled message's slot. The tracker gives a freed slot
                # to a message it queued (resumed, or committed while the window was
                # full) before anyone: then the slot is gone, and this send waits for
                # the next at the front of the line rather than queue behind that one
                # (which made every later send queue there too: a queued message costs
                # the tracker half as much again as a direct one). A durable send goes
                # on to its commit, which overlaps the wait for a slot that way (it
                # was 6 % slower made to wait here: docs/performance.md).
                if durable is not None or self._tracker.in_flight(destination) < self._window:
                    break
                front = True
        try:
            now = loop.time()
            mid = self._ids.next()
            now_ns = int((now + self._wall_offset) * 1e9)
            if headers or json_body:
                envelope = self._envelope_with(headers or {}, json_body)
            else:
                envelope = self._envelope
            type_name = self._type_names.get(msg_type)
            if type_name is None:
                if len(self._type_names) >= _ENVELOPE_CACHE:
                    self._type_names.clear()
                type_name = self._type_names[msg_type] = check_name(msg_type, "type name")
            frame = pack_item(
                mid,
                type_name,
                check_name(to, "recipient") if to else b"",
                envelope,
                body,
                kind,
                1,
                pol.priority,
                FLAG_REQUEST if request else 0,
                now_ns,
                now_ns,
                now_ns + int(pol.deadline * 1e9),
            )
            report = DeliveryReport(mid, msg_type)
            if durable is not None:
                # On disk before send returns; inside a handler, with the handler's commit.
                batch = durable.stage(report, frame, destination, kind, request, pol, now_ns)
                if batch is None:
                    return report
                try:
                    await batch.waiter()
                except asyncio.CancelledError:
                    durable.cancelled(batch, report, frame, destination, kind, pol)
                    raise
                durable.committed(batch, report)
                now = loop.time()
            self._track(report, frame, destination, kind, pol, now)
        except BaseException:
            if waited:
                lines.admit(destination)  # our turn in line goes to the next one
            raise
        if wait_ack:
            # The tracker settles every message by its deadline; the extra second only
            # guards against a bug leaving this wait open forever.
            await report.wait(pol.deadline + 1.0)
            if not report.done:  # pragma: no cover - would be a tracker bug
                self._proto.cancel(mid, loop.time(), "the tracker never settled it")
        return report

    def _track(
        self,
        report: DeliveryReport,
        frame: bytes,
        destination: str,
        kind: int,
        pol: Policy,
        now: float,
    ) -> None:
        """Hand a new message to the tracker and transmit it if its window has room."""
        mid = report.message_id
        report._frame = frame
        self._pending[mid] = report
        self._proto.submit(mid, report.message_type, destination, pol, now, kind == KIND_EVENT)
        # The only timer submit added is this message's: its first ack timeout, or its
        # deadline while it waits for window room (tracker.submit). Every other change
        # already armed the timer; asking the tracker, liveness and deduper for their
        # next deadline here was 10 % of a pipelined sender's profile samples.
        if self._timer is not None:
            self._timer.at(now + min(pol.ack_timeout, pol.deadline))

    def _window_timeout(self, destination: str) -> SendWindowTimeout:
        return SendWindowTimeout(
            f"{self.identity}: {self._window} messages to {destination} "
            "stayed unacknowledged for the whole timeout"
        )

    def _envelope_with(self, headers: Mapping[str, str], json_body: bool) -> bytes:
        env = envelope_pb2.Envelope()
        env.ParseFromString(self._envelope)
        env.headers.update(headers)
        if json_body:
            env.content_encoding = JSON_ENCODING
        return env.SerializeToString()

    def _untyped(self, msg: Untyped, policy: Policy | None) -> tuple[str, bytes, bool, Policy]:
        return encode_untyped(self.registry, msg, policy, self.policy)

    # ------------------------------------------------------------------ the protocol's actions
    # (EndpointIO: what the protocol decided, encoded with the wire and carried out)

    def transmit(self, hub: int, msg_id: bytes, attempt: int, now: float) -> None:
        report = self._pending.get(msg_id)
        if report is None:  # pragma: no cover - the tracker only transmits pending ids
            return
        frame = report._frame
        if attempt > 1:
            frame = reattempt(frame, attempt, int((now + self._wall_offset) * 1e9))
        self._links[hub].link.outbox.message(frame)

    def send_acks(self, hub: int, msg_ids: list[bytes], peer: bytes) -> None:
        outbox = self._links[hub].link.outbox
        if len(msg_ids) == 1:
            outbox.ack(msg_ids[0], peer)
        else:
            outbox.acks(msg_ids, peer)

    def send_ack(self, hub: int, ack: AckReply, peer: bytes) -> None:
        self._links[hub].link.outbox.full_ack(_encode_ack(ack), peer)

    def send_hello(self, hub: int) -> None:
        proto = self._proto
        hello = wire_pb2.Hello(
            commands=proto.commands,
            events=proto.events,
            heartbeat_ms=int(self.heartbeat * 1000),
            credit=self.credit,
            versions=[PROTOCOL_VERSION],
            max_batch=self.limits.max_batch,
        )
        hello.identity.service = self.identity.service
        hello.identity.instance = self.identity.instance
        self._links[hub].link.outbox.control(encode_hello(hello), first=True)

    def send_heartbeat(self, hub: int) -> None:
        self._links[hub].link.outbox.control(encode_heartbeat())

    def hub_silent(self, hub: int, silence: float) -> None:
        log.warning(
            "%s: hub %s silent for %.1f s", self.identity, self._links[hub].link.address, silence
        )

    def failed(self, c: Completion, error: DeliveryError) -> None:
        report = self._pending.pop(c.msg_id, None)
        if report is None:
            return
        report._frame = b""  # a report the caller keeps must not keep the message
        report._settle(
            DeliveryStatus.FAILED,
            attempts=c.attempts,
            first_sent_at=(
                c.first_sent_at + self._wall_offset if c.first_sent_at is not None else None
            ),
            error=error,
        )
        self.dead_letters.append(report)
        log.warning("delivery failed: %s", report.error)
        if self._durable is not None:
            self._durable.failed(c, report)
        if self._window_waiters:
            self._window_waiters.admit(c.destination)

    def acked(self, completions: Sequence[Completion]) -> None:
        """Settle acked messages: an ACK group's worth in one loop, as a pipelined
        sender settles tens of thousands a second."""
        pending = self._pending
        offset = self._wall_offset
        acked: list[bytes] = []
        for c in completions:
            report = pending.pop(c.msg_id, None)
            if report is None:
                continue
            acked.append(c.msg_id)
            report._frame = b""  # a report the caller keeps must not keep the message
            report._settle(  # positional: once per acked message
                DeliveryStatus.ACKED,
                c.attempts,
                c.first_sent_at + offset if c.first_sent_at is not None else None,
                c.acked_at + offset if c.acked_at is not None else None,
                c.acked_by,
                None,
                c.response,
            )
        if self._durable is not None and acked:
            self._durable.acked(acked)
        waiting = self._window_waiters
        if waiting:
            for c in completions:
                waiting.admit(c.destination)
                if not waiting:  # the last line emptied: the rest would find no one
                    break

    # ------------------------------------------------------------------ receiving

    def _on_receive(self, hub: _HubLink, multiparts: list[Multipart]) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        now = loop.time()
        proto = self._proto
        proto.begin_batch(hub.index, now)
        try:
            for frames in multiparts:
                try:
                    self._handle(hub, frames, now)
                except RemoteProtocolError as exc:
                    self.stats.refused[exc.code] += 1
                    log.warning(
                        "%s: refused input from hub %s: %s", self.identity, hub.link.address, exc
                    )
                    hub.link.outbox.control(refusal_for(exc))
        finally:
            proto.end_batch()
        self._arm_timer()

    def _handle(self, hub: _HubLink, frames: Multipart, now: float) -> None:
        cmd = decode_command(frames)
        proto = self._proto
        if cmd is Command.MESSAGE:
            for item in decode_messages(frames, self.limits):
                if proto.accept(hub.index, item, now):
                    self._on_message(hub, item, now)
        elif cmd is Command.ACK:
            for group in split_acks(frames, self.limits):
                proto.on_acks(self._identity_of(group.peer), group.ok_ids, _full(group), now)
        elif cmd is Command.ROUTED:
            for entry in decode_routed(frames, self.limits):
                proto.on_routed(entry.message_id, entry.targets, now)
        elif cmd is Command.HEARTBEAT:
            decode_heartbeat(frames)
        elif cmd is Command.WELCOME:
            welcome = decode_welcome(frames, self.limits)
            hub.link.outbox.limit_batch(welcome.max_batch)  # what this hub accepts
            proto.on_welcome(hub.index, welcome.heartbeat_ms, now)
            self._welcomed.set()
        elif cmd is Command.REFUSAL:
            refusal = decode_refusal(frames, self.limits)
            log.warning("%s: hub %s refused: %s", self.identity, hub.link.address, refusal)
            proto.on_refusal(hub.index, refusal.code, refusal.message_id, str(refusal), now)
        elif cmd is Command.BYE:
            decode_bye(frames, self.limits)
            proto.on_bye(hub.index)
        else:
            raise RemoteProtocolError(f"{cmd.name} is not a command an endpoint accepts")

    def _identity_of(self, raw: bytes) -> Identity:
        ident = self._identities.get(raw)
        if ident is None:
            service, instance = decode_identity(raw)
            ident = self._identities[raw] = Identity(service, instance)
        return ident

    def _on_message(self, hub: _HubLink, item: MessageItem, now: float) -> None:
        """Run the handler of a message the protocol accepted."""
        route = self._dispatch.get(item.type)
        assert route is not None  # the protocol accepts only types it was told of
        try:
            raw = item.envelope_bytes
            known = self._envelopes.get(raw)  # see _parse_envelope
            if known is not None:
                sender, json_body = known
                env = None
            else:
                sender, json_body, env = self._parse_envelope(item, raw)
            msg = self._decode(route, item, json_body)
            ctx = self._context(item, sender, env, now)
        except Exception as exc:
            self._proto.undecodable(hub.index, item, str(exc), now)
            return
        loop = self._loop
        assert loop is not None
        if self._durable is not None:
            task = self._durable.run(hub, item, route, msg, ctx)
            if task is None:
                return
        else:
            started = start_eager(route.fn(msg, ctx), loop)
            if isinstance(started, tuple):  # the handler returned (or raised) at once
                result, failure = started
                if failure is None and not item.flags & FLAG_REQUEST and not self._closed:
                    # The plain OK of most messages: acked with the batch.
                    self._proto.handled_ok(item.id, item.peer)
                else:
                    self._handled(hub, item, route, result, failure)
                return
            task = started
            report_when_done(task, functools.partial(self._handled, hub, item, route))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _decode(self, route: Route, item: MessageItem, json_body: bool) -> Any:
        """The handler's argument: a typed message, or a dict for a by-name handler."""
        if route.cls is not None:
            msg = route.cls()
            if json_body:
                json_format.ParseDict(json.loads(item.body), msg)
            else:
                msg.ParseFromString(item.body_buffer())  # type: ignore[arg-type]  # any buffer
            return msg
        if json_body:
            payload = json.loads(item.body)
            if not isinstance(payload, dict):
                raise ValueError("a JSON body must be an object")
            return payload
        spec = self.registry.get(item.type)
        if spec is None:
            raise ValueError("protobuf body of a type this endpoint's registry does not know")
        typed = spec.cls()
        typed.ParseFromString(item.body)
        return json_format.MessageToDict(typed, preserving_proto_field_name=True)

    def _parse_envelope(
        self, item: MessageItem, raw: bytes
    ) -> tuple[Identity, bool, envelope_pb2.Envelope | None]:
        """The sender, whether the body is JSON, and the parsed envelope if it has
        headers or a correlation id (else None), for envelope bytes ``raw`` that
        :attr:`_envelopes` does not know.

        A sender puts the same envelope bytes on every message without headers, so
        those are parsed once and kept by their bytes: the receiver looks them up
        there first, a dict lookup instead of a protobuf parse and an Identity per
        message (the profile's largest item on the receiver). Envelopes with headers
        or a correlation id vary per message and are parsed each time."""
        env = item.envelope()
        sender = Identity(env.sender.service, env.sender.instance)
        json_body = env.content_encoding == JSON_ENCODING
        if env.headers or env.correlation_id:
            return sender, json_body, env
        if len(self._envelopes) >= _ENVELOPE_CACHE:
            self._envelopes.clear()
        self._envelopes[raw] = (sender, json_body)
        return sender, json_body, None

    def _context(
        self, item: MessageItem, sender: Identity, env: envelope_pb2.Envelope | None, now: float
    ) -> Context:
        # Positional, in Context's field order: keyword arguments cost 0.3 µs more here,
        # once per handled message.
        return Context(
            item.id,
            item.type,
            sender,
            item.attempt,
            item.created_at_ns / 1e9,
            item.sent_at_ns / 1e9,
            now + self._wall_offset,
            _NO_HEADERS if env is None else dict(env.headers),
            b"" if env is None else env.correlation_id,
            item.priority,
        )

    def _handled(
        self,
        hub: _HubLink,
        item: MessageItem,
        route: Route,
        result: Message | None,
        exc: BaseException | None,
    ) -> None:
        """A handler ended (returned ``result`` or raised ``exc``): tell the protocol."""
        loop = self._loop
        proto = self._proto
        if loop is None or self._closed or isinstance(exc, asyncio.CancelledError):
            proto.abandon(item.id)
            return
        request = bool(item.flags & FLAG_REQUEST)
        if exc is None and request and result is None:
            exc = Reject(f"{route.origin} returned no response to a request")
        now = proto._batch_now if proto.receiving else loop.time()
        if exc is not None:
            if not isinstance(exc, Reject) and not isinstance(exc, RetryLater):
                log.error(
                    "%s raised on %s %s", route.origin, item.type, item.id.hex(), exc_info=exc
                )
            proto.handled(hub.index, item, now, exc)
        elif result is None or not request:
            proto.handled(hub.index, item, now)
        else:
            proto.handled(
                hub.index, item, now, None, result.SerializeToString(), result.DESCRIPTOR.full_name
            )
        if not proto.receiving:
            self._arm_timer()

    # ------------------------------------------------------------------ hubs

    def _types_changed(self) -> None:
        self._proto.set_types(
            self._dispatch.types(Kind.COMMAND),
            self._dispatch.types(Kind.EVENT),
            self._loop.time() if self._loop is not None else 0.0,
        )

    def _on_connection(self, hub: _HubLink, up: bool) -> None:
        if self._closed or not hasattr(hub, "link"):
            return  # called during connect(): start() says hello right after
        self._proto.connected(hub.index, self._loop.time() if self._loop else 0.0, up)

    # ------------------------------------------------------------------ timers

    def _arm_timer(self) -> None:
        timer = self._timer
        if timer is None:
            return
        timer.at(self._proto.next_deadline())

    def _tick(self) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        self._proto.tick(loop.time())
        self._arm_timer()


# ---------------------------------------------------------------------- helpers


def _encode_ack(a: AckReply) -> bytes:
    ack = envelope_pb2.Ack(message_id=a.msg_id, outcome=envelope_pb2.Outcome.ValueType(a.outcome))
    if a.receiver is not None:
        ack.receiver.service = a.receiver.service
        ack.receiver.instance = a.receiver.instance
    ack.acked_at_ns = time.time_ns()
    error = a.error
    if error is not None:
        ack.error.type = error.type
        ack.error.message = error.message
        ack.error.permanent = error.permanent
    if a.retry_after:
        ack.retry_after_ms = int(a.retry_after * 1000)
    if a.response or a.response_type:
        ack.response = a.response
        ack.response_type = a.response_type
    return ack.SerializeToString()


def _full(group: AckGroup) -> list[AckReply]:
    """A group's full acks as plain values (most groups have none)."""
    if not group.full:
        return []
    out = []
    for ack in group.full_acks():
        error = None
        if ack.HasField("error"):
            error = RemoteError(ack.error.type, ack.error.message, ack.error.permanent)
        receiver = None
        if ack.HasField("receiver"):
            receiver = Identity(ack.receiver.service, ack.receiver.instance)
        out.append(
            AckReply(
                ack.message_id,
                Outcome(ack.outcome),
                receiver,
                error,
                ack.retry_after_ms / 1000,
                ack.response,
                ack.response_type,
            )
        )
    return out
