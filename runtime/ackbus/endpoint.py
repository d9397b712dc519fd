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
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
from .core import (
    Admit,
    Completion,
    InboundDeduper,
    Liveness,
    OutboundTracker,
    Outcome,
    PeerDead,
    Reason,
    RemoteError,
    SendHeartbeat,
    Transmit,
    Verdict,
)
from .errors import (
    AckTimeout,
    Cancelled,
    ClosedError,
    ConnectTimeout,
    DeliveryError,
    Expired,
    NoRoute,
    Reject,
    Rejected,
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
    NOT_REGISTERED,
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


@dataclass(slots=True)
class EndpointStats:
    """Counters since the endpoint started."""

    sent: int = 0
    """Messages accepted by send/publish/request."""
    transmits: int = 0
    """Attempts put on the wire (first sends and retries)."""
    retries: int = 0
    acked: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    """Failed messages by reason ("timeout", "rejected", "no-route", ...)."""
    received: int = 0
    handled: int = 0
    """Handler runs that returned."""
    handler_errors: int = 0
    duplicates: int = 0
    """Received duplicates answered without running the handler."""
    refused: Counter[str] = field(default_factory=Counter)
    """Bad input refused, by code."""


class _HubLink:
    """One hub connection and what the endpoint knows of it."""

    __slots__ = ("index", "link", "welcomed")

    link: Link

    def __init__(self, index: int) -> None:
        self.index = index
        self.welcomed = False


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
        self.stats = EndpointStats()
        self.dead_letters: deque[DeliveryReport] = deque(maxlen=_DEAD_LETTERS)
        """The latest failed reports (in-memory mode keeps the last 1,000)."""
        self._window = window
        self._tracker = OutboundTracker(window=window, rng=random.Random(seed))
        self._deduper = InboundDeduper(capacity=dedupe_capacity, ttl=dedupe_ttl)
        self._liveness: Liveness[int] = Liveness(interval=heartbeat, misses=misses)
        self._dispatch = Dispatcher()
        self._pending: dict[bytes, DeliveryReport] = {}
        """Reports of the messages sent and not settled; a pending report carries its
        frame (no second object per message)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._receiving = False
        """True while a received batch is being handled: it arms the timer once at the
        end, so handlers finishing within it need not (one arm per batch, not per message)."""
        self._batch_now = 0.0
        """The loop time the batch being received is handled at (while ``_receiving``)."""
        self._batch_ok: list[bytes] = []
        self._batch_peers: list[bytes] = []
        """Ids (and their peer tokens) of the batch's messages whose handlers returned
        during it: finished in the deduper and acked together at its end (see
        :meth:`_ack_batch`)."""
        self._links: list[_HubLink] = []
        self._next_link = 0
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
        self._hello_again()

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
        self._hello_again()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Endpoint:
        """Connect to every hub and wait until one welcomed us (``ConnectTimeout``)."""
        if self._closed:
            raise ClosedError("endpoint closed")
        if self._started:
            return self
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._wall_offset = time.time() - loop.time()
        self._timer = Timer(loop, self._tick)
        try:
            if self._durable is not None:
                await self._durable.start(self, loop)
            for index, address in enumerate(self._hub_addresses):
                hub = _HubLink(index)
                hub.link = self._backend.connect(
                    address,
                    on_receive=functools.partial(self._on_receive, hub),
                    on_connection=functools.partial(self._on_connection, hub),
                    options=self._options,
                )
                self._links.append(hub)
                self._say_hello(hub)
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
        for mid in list(self._pending):
            completion = self._tracker.cancel(mid, now)
            if completion is not None:
                self._settle(completion, why="the endpoint was closed")
        self._window_waiters.fail(ClosedError(f"{self.identity}: endpoint closed"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if self._timer is not None:
            self._timer.cancel()
        for hub in self._links:
            if hub.welcomed:
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
                completion = self._tracker.cancel(mid, loop.time())
                if completion is not None:
                    self._settle(completion, why="the tracker never settled it")
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
        self.stats.sent += 1
        admit = self._tracker.submit(  # positional: once per message
            mid, report.message_type, destination, pol, now, None if kind == KIND_EVENT else 1
        )
        if admit is Admit.SEND:
            self._transmit(frame)
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

    def _transmit(self, frame: bytes) -> None:
        hub = self._pick_link()
        hub.link.outbox.message(frame)
        self.stats.transmits += 1

    def _pick_link(self) -> _HubLink:
        links = self._links
        n = len(links)
        if n == 1:
            return links[0]
        for _ in range(n):
            self._next_link = (self._next_link + 1) % n
            hub = links[self._next_link]
            if hub.welcomed:
                return hub
        return links[0]

    # ------------------------------------------------------------------ settling

    def _settle(self, c: Completion, why: str = "") -> None:
        if c:
            self._settle_acked((c,))
            return
        report = self._pending.pop(c.msg_id, None)
        if report is None:
            return
        report._frame = b""  # a report the caller keeps must not keep the message
        reason = c.reason or Reason.TIMEOUT
        self.stats.failed[reason.value] += 1
        report._settle(
            DeliveryStatus.FAILED,
            attempts=c.attempts,
            first_sent_at=(
                c.first_sent_at + self._wall_offset if c.first_sent_at is not None else None
            ),
            error=_delivery_error(c, report._note, why),
        )
        self.dead_letters.append(report)
        log.warning("delivery failed: %s", report.error)
        if self._durable is not None:
            self._durable.failed(c, report)
        if self._window_waiters:
            self._window_waiters.admit(c.destination)

    def _settle_acked(self, completions: Sequence[Completion]) -> None:
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
        self.stats.acked += len(acked)
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
        self._liveness.seen(hub.index, now)
        self._receiving = True
        self._batch_now = now
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
            self._receiving = False
            if self._batch_ok:
                self._ack_batch(hub, now)
        self._arm_timer()

    def _ack_batch(self, hub: _HubLink, now: float) -> None:
        """Finish and ack, together, the messages whose handlers returned OK (without a
        response) while their batch was being received: one deduper call and one ack
        run per peer for the batch, where a call of each per message was a tenth of a
        pipelined receiver's time. Until then, a copy of such a message arriving later
        in the same batch is RUNNING: it gets no ack of its own, and needs none, since
        the ack that follows here settles its id."""
        ids, peers = self._batch_ok, self._batch_peers
        self._batch_ok, self._batch_peers = [], []
        self._ack_ok(hub, ids, peers, now)

    def _ack_ok(self, hub: _HubLink, ids: list[bytes], peers: list[bytes], now: float) -> None:
        """Finish ``ids`` (handled, OK, no response) in the deduper and ack them through
        ``hub``, each to its sender (``peers``, in the same order): one deduper call and
        one ack run per sender."""
        if self._closed:
            for mid in ids:
                self._deduper.abandon(mid)
            return
        self._deduper.finish_ok(ids, now)
        outbox = hub.link.outbox
        peer = peers[0]
        if peers.count(peer) == len(peers):  # one sender (or one hub token): one run
            outbox.acks(ids, peer)
            return
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or peers[i] != peer:
                outbox.acks(ids[start:i], peer)
                if i < len(ids):
                    start, peer = i, peers[i]

    def _handle(self, hub: _HubLink, frames: Multipart, now: float) -> None:
        cmd = decode_command(frames)
        if cmd is Command.MESSAGE:
            for item in decode_messages(frames, self.limits):
                self._on_message(hub, item, now)
        elif cmd is Command.ACK:
            self._on_acks(frames, now)
        elif cmd is Command.ROUTED:
            for entry in decode_routed(frames, self.limits):
                c = self._tracker.routed(entry.message_id, entry.targets, now)
                if c is not None:
                    self._settle(c)
        elif cmd is Command.HEARTBEAT:
            decode_heartbeat(frames)
        elif cmd is Command.WELCOME:
            welcome = decode_welcome(frames, self.limits)
            hub.link.outbox.limit_batch(welcome.max_batch)  # what this hub accepts
            hub.welcomed = True
            self._liveness.add(hub.index, now, interval=max(welcome.heartbeat_ms, 1) / 1000)
            self._welcomed.set()
        elif cmd is Command.REFUSAL:
            self._on_refusal(hub, decode_refusal(frames, self.limits), now)
        elif cmd is Command.BYE:
            decode_bye(frames, self.limits)
            hub.welcomed = False
        else:
            raise RemoteProtocolError(f"{cmd.name} is not a command an endpoint accepts")

    def _on_refusal(self, hub: _HubLink, refusal: RemoteProtocolError, now: float) -> None:
        log.warning("%s: hub %s refused: %s", self.identity, hub.link.address, refusal)
        if refusal.code == NOT_REGISTERED:
            # The hub does not know us (it restarted): register again; the refused
            # messages are retried by their timers.
            hub.welcomed = False
            self._say_hello(hub)
            return
        mid = refusal.message_id
        if mid in self._pending:
            error = RemoteError("RemoteProtocolError", str(refusal), permanent=True)
            c = self._tracker.ack(mid, outcome=Outcome.REJECTED, now=now, error=error)
            if c is not None:
                self._settle(c)

    def _on_acks(self, frames: Multipart, now: float) -> None:
        tracker = self._tracker
        for group in split_acks(frames, self.limits):
            receiver = self._identity_of(group.peer)
            settled = tracker.ack_ok(group.ok_ids, now, receiver)
            if settled:
                self._settle_acked(settled)
            if not group.full:
                continue
            for ack in group.full_acks():
                self._on_full_ack(ack, receiver, now)

    def _on_full_ack(self, ack: envelope_pb2.Ack, receiver: Identity, now: float) -> None:
        mid = ack.message_id
        error = None
        if ack.HasField("error"):
            error = RemoteError(ack.error.type, ack.error.message, ack.error.permanent)
        if ack.outcome == envelope_pb2.NO_ROUTE:
            pending = self._pending.get(mid)
            if pending is not None and error is not None:
                pending._note = error.message
        c = self._tracker.ack(
            mid,
            outcome=ack.outcome,
            now=now,
            receiver=receiver,
            error=error,
            retry_after=ack.retry_after_ms / 1000,
            response=ack.response if ack.response_type or ack.response else None,
        )
        if c is not None:
            self._settle(c)

    def _identity_of(self, raw: bytes) -> Identity:
        ident = self._identities.get(raw)
        if ident is None:
            service, instance = decode_identity(raw)
            ident = self._identities[raw] = Identity(service, instance)
        return ident

    def _on_message(self, hub: _HubLink, item: MessageItem, now: float) -> None:
        self.stats.received += 1
        route = self._dispatch.get(item.type)
        outbox = hub.link.outbox
        if route is None:
            # The hub's view of us is stale (e.g. we re-registered): let it route again.
            outbox.full_ack(
                _ack(
                    item.id,
                    self.identity,
                    Outcome.NO_ROUTE,
                    error=RemoteError(
                        "NoHandler", f"{self.identity} has no handler for {item.type}"
                    ),
                ),
                item.peer,
            )
            return
        if item.deadline_ns and (now + self._wall_offset) * 1e9 > item.deadline_ns:
            outbox.full_ack(_ack(item.id, self.identity, Outcome.EXPIRED), item.peer)
            return
        verdict = self._deduper.begin(item.id, now)
        if verdict is not Verdict.NEW:
            self.stats.duplicates += 1
            if verdict is Verdict.DONE:
                self._reack(outbox, item)
            return  # RUNNING: the ack follows when the first run ends
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
            error = RemoteError(
                "RemoteProtocolError", f"undecodable {item.type} message: {exc}", permanent=True
            )
            self._deduper.finish(item.id, Outcome.REJECTED, now, error=error)
            self.stats.refused["MALFORMED"] += 1
            outbox.full_ack(_ack(item.id, self.identity, Outcome.REJECTED, error=error), item.peer)
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
                    # _handled's plain OK, inline and without a callback object: most
                    # messages. (Items arrive only within their batch: acked at its end.)
                    self.stats.handled += 1
                    self._batch_ok.append(item.id)
                    self._batch_peers.append(item.peer)
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
        loop = self._loop
        if loop is None or self._closed:
            self._deduper.abandon(item.id)
            return
        now = self._batch_now if self._receiving else loop.time()
        outbox = hub.link.outbox
        mid = item.id
        request = bool(item.flags & FLAG_REQUEST)
        if exc is None and request and result is None:
            exc = Reject(f"{route.origin} returned no response to a request")
        if exc is None:
            self.stats.handled += 1
            if result is None or not request:
                # (A handler that returned within its batch never gets here: _on_message
                # acks it with the batch.)
                self._deduper.finish(mid, Outcome.OK, now)
                outbox.ack(mid, item.peer)
            else:
                body = result.SerializeToString()
                self._deduper.finish(mid, Outcome.OK, now, response=body)
                outbox.full_ack(
                    _ack(
                        mid,
                        self.identity,
                        Outcome.OK,
                        response=body,
                        response_type=result.DESCRIPTOR.full_name,
                    ),
                    item.peer,
                )
            if not self._receiving:
                self._arm_timer()
            return
        if isinstance(exc, asyncio.CancelledError):
            self._deduper.abandon(mid)
            return
        self.stats.handler_errors += 1
        if isinstance(exc, RetryLater):
            self._deduper.abandon(mid)
            outbox.full_ack(
                _ack(mid, self.identity, Outcome.RETRY_LATER, retry_after=exc.after), item.peer
            )
            return
        permanent = isinstance(exc, Reject) and exc.permanent
        error = RemoteError(type(exc).__name__, str(exc), permanent=permanent)
        if not isinstance(exc, Reject):
            log.error("%s raised on %s %s", route.origin, item.type, mid.hex(), exc_info=exc)
        self._deduper.finish(mid, Outcome.REJECTED, now, error=error)
        outbox.full_ack(_ack(mid, self.identity, Outcome.REJECTED, error=error), item.peer)
        if not self._receiving:
            self._arm_timer()

    def _reack(self, outbox: Any, item: MessageItem) -> None:
        record = self._deduper.record(item.id)
        if record is None:  # pragma: no cover - DONE implies a record
            return
        if record.outcome == Outcome.OK and not record.response:
            outbox.full_ack(_ack(item.id, self.identity, Outcome.DUPLICATE), item.peer)
            return
        outcome = Outcome.DUPLICATE if record.outcome == Outcome.OK else record.outcome
        outbox.full_ack(
            _ack(item.id, self.identity, outcome, error=record.error, response=record.response),
            item.peer,
        )

    # ------------------------------------------------------------------ hubs

    def _say_hello(self, hub: _HubLink) -> None:
        hello = wire_pb2.Hello(
            commands=self._dispatch.types(Kind.COMMAND),
            events=self._dispatch.types(Kind.EVENT),
            heartbeat_ms=int(self.heartbeat * 1000),
            credit=self.credit,
            versions=[PROTOCOL_VERSION],
            max_batch=self.limits.max_batch,
        )
        hello.identity.service = self.identity.service
        hello.identity.instance = self.identity.instance
        hub.link.outbox.control(encode_hello(hello), first=True)

    def _hello_again(self) -> None:
        for hub in self._links:
            self._say_hello(hub)

    def _on_connection(self, hub: _HubLink, up: bool) -> None:
        if self._closed or not hasattr(hub, "link"):
            return  # called during connect(): start() says hello right after
        if up:
            self._say_hello(hub)
        else:
            hub.welcomed = False

    # ------------------------------------------------------------------ timers

    def _arm_timer(self) -> None:
        timer = self._timer
        if timer is None:
            return
        timer.at(self._tracker.next_deadline())
        timer.at(self._liveness.next_deadline())
        timer.at(self._deduper.next_deadline())

    def _tick(self) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        now = loop.time()
        for action in self._tracker.tick(now):
            if isinstance(action, Transmit):
                self._retransmit(action, now)
            else:
                self._settle(action)
        for lv in self._liveness.tick(now):
            if isinstance(lv, SendHeartbeat):
                self._links[lv.peer].link.outbox.control(encode_heartbeat())
            elif isinstance(lv, PeerDead):
                hub = self._links[lv.peer]
                log.warning(
                    "%s: hub %s silent for %.1f s", self.identity, hub.link.address, lv.silence
                )
                hub.welcomed = False
                self._say_hello(hub)
                self._liveness.add(lv.peer, now)
        self._deduper.tick(now)
        self._arm_timer()

    def _retransmit(self, action: Transmit, now: float) -> None:
        report = self._pending.get(action.msg_id)
        if report is None:  # pragma: no cover - the tracker only retransmits pending ids
            return
        if action.attempt > 1:
            self.stats.retries += 1
            sent_ns = int((now + self._wall_offset) * 1e9)
            self._transmit(reattempt(report._frame, action.attempt, sent_ns))
        else:
            self._transmit(report._frame)


# ---------------------------------------------------------------------- helpers


def _ack(
    mid: bytes,
    receiver: Identity,
    outcome: Outcome,
    *,
    error: RemoteError | None = None,
    retry_after: float = 0.0,
    response: bytes = b"",
    response_type: str = "",
) -> bytes:
    ack = envelope_pb2.Ack(message_id=mid, outcome=envelope_pb2.Outcome.ValueType(outcome))
    ack.receiver.service = receiver.service
    ack.receiver.instance = receiver.instance
    ack.acked_at_ns = time.time_ns()
    if error is not None:
        ack.error.type = error.type
        ack.error.message = error.message
        ack.error.permanent = error.permanent
    if retry_after:
        ack.retry_after_ms = int(retry_after * 1000)
    if response or response_type:
        ack.response = response
        ack.response_type = response_type
    return ack.SerializeToString()


def _delivery_error(c: Completion, no_route: str, why: str) -> DeliveryError:
    kw: dict[str, Any] = {"message_id": c.msg_id, "message_type": c.msg_type}
    reason = c.reason
    tries = f"{c.attempts} attempt{'s' if c.attempts != 1 else ''}"
    if reason is Reason.REJECTED:
        err = c.error
        remote = f"{err.type}: {err.message}" if err is not None else "rejected"
        return Rejected(
            f"rejected by the receiver after {tries}: {remote}",
            remote_type=err.type if err else "",
            remote_message=err.message if err else "",
            permanent=err.permanent if err else False,
            **kw,
        )
    if reason is Reason.NO_ROUTE:
        detail = no_route or f"no live service handles {c.msg_type}"
        return NoRoute(f"{detail} (gave up after {tries})", **kw)
    if reason is Reason.EXPIRED:
        return Expired(f"expired before a handler ran ({tries})", **kw)
    if reason is Reason.CANCELLED:
        return Cancelled(f"cancelled: {why or 'cancelled by the caller'}", **kw)
    return AckTimeout(f"no acknowledgement after {tries}", **kw)
