"""The bridge: an existing ZeroMQ service that knows nothing of ackbus, on the bus.

A :class:`Bridge` is an ackbus :class:`~ackbus.endpoint.Endpoint` (named after the
legacy service) plus plain ZeroMQ sockets facing the legacy service:

* **legacy → bus**: a SUB socket on the legacy PUB (:meth:`Bridge.subscribe`) or a
  PULL socket (:meth:`Bridge.pull`) reads legacy messages, the codec turns them into
  typed messages, and the endpoint sends them reliably (acks, retries, dedupe at the
  receiver) to whatever handles their type: commands with ``send``, events (by the
  registry's policy) with ``publish``;
* **legacy requests**: a REP socket (:meth:`Bridge.serve_requests`) answers the legacy
  REQ with the bus's outcome — the response, ``Ack`` or ``Nack`` — the one place the
  legacy side gets an ack;
* **bus → legacy**: the bridge registers handlers on its endpoint for the types the
  legacy service consumes and writes each message in the legacy format to a PUB
  (:meth:`Bridge.publish_to`), PUSH (:meth:`Bridge.push_to`) or REQ
  (:meth:`Bridge.request_to`) socket. The handler's outcome is the ack the bus sees.

The legacy side cannot ack, so what holds at this boundary differs per socket type;
docs/legacy.md states it exactly. Malformed legacy input is counted in
``bridge.stats.malformed``, logged, and never reaches a handler or stops the bridge.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import zmq
import zmq.asyncio
from google.protobuf.message import Message

from .._types import Context, DeliveryReport, Kind, Untyped
from ..endpoint import Endpoint
from ..errors import ClosedError, DeliveryError, Reject, RetryLater, SchemaError
from ._codec import LegacyCodec, LegacyFormat, LegacyFormatError, LegacyMessage, _lookup
from ._custom import CustomFormat

__all__ = ["Bridge", "BridgeStats", "LegacySocket", "SocketRole"]

log = logging.getLogger("ackbus.legacy.bridge")

MessageType = type[Message] | str
"""A type the legacy service consumes: a generated class, or a type name."""
Format = LegacyFormat | CustomFormat[Any]
"""A legacy socket's layout: a built-in format, or the user's own functions."""
Failure = Callable[[Any], str | None]
"""Reads a legacy REP's decoded reply: the failure's text, or ``None`` for a success."""

_REPLIES = 1000
"""REP replies kept to answer a legacy client's re-send of the same MessageId."""

LEGACY_ID_HEADER = "legacy-message-id"
LEGACY_SENDER_HEADER = "legacy-sender"
LEGACY_TIME_HEADER = "legacy-timestamp"


class SocketRole(enum.Enum):
    """The bridge's socket facing the legacy service."""

    SUB = "sub"
    PULL = "pull"
    PUB = "pub"
    PUSH = "push"
    REQ = "req"
    REP = "rep"


_ZMQ_TYPE = {
    SocketRole.SUB: zmq.SUB,
    SocketRole.PULL: zmq.PULL,
    SocketRole.PUB: zmq.PUB,
    SocketRole.PUSH: zmq.PUSH,
    SocketRole.REQ: zmq.REQ,
    SocketRole.REP: zmq.REP,
}


@dataclass(slots=True)
class BridgeStats:
    """Counters since the bridge started."""

    from_legacy: int = 0
    """Multiparts read from the legacy service."""
    malformed: Counter[str] = field(default_factory=Counter)
    """Legacy input refused, by reason ("MALFORMED", "UNKNOWN_TYPE")."""
    duplicates: int = 0
    """Legacy messages dropped because their MessageId was seen before."""
    forwarded: int = 0
    """Legacy messages handed to the endpoint (send/publish)."""
    delivered: int = 0
    """Forwarded messages acked by the bus."""
    failed: Counter[str] = field(default_factory=Counter)
    """Forwarded messages whose delivery failed, by error class."""
    to_legacy: Counter[str] = field(default_factory=Counter)
    """Bus messages written to the legacy service, by socket role."""
    backpressure: int = 0
    """Bus messages refused with RetryLater (PUSH full or unconnected, REQ silent)."""
    failure_replies: int = 0
    """Legacy REP replies that said the request failed (``request_to(failure=...)``):
    each refused the bus message with a permanent ``Reject``."""


@dataclass(slots=True)
class LegacySocket:
    """One socket facing the legacy service, as configured; ``address`` is resolved
    (a ``tcp://127.0.0.1:*`` bind gets its port) once the bridge has started."""

    role: SocketRole
    address: str
    fmt: Format
    bind: bool
    topics: tuple[bytes, ...] = ()
    types: dict[str, type[Message] | None] = field(default_factory=dict)
    """Outbound: the type names this socket takes and, for REQ, each one's reply class."""
    timeout: float = 5.0
    failure: Failure | None = None
    """REQ: reads each reply for a failure (``request_to(failure=..., error_field=...)``)."""
    sock: zmq.asyncio.Socket | None = field(default=None, repr=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    """REQ is lockstep: one request in flight per socket."""


class Bridge:
    """Attach a plain ZeroMQ service to the bus. Use as ``async with Bridge(ep, codec)``.

    ``endpoint`` is the bus side, usually named after the legacy service; the bridge
    starts and closes it. ``codec`` converts messages (its registry decides which
    legacy types are known). ``dedupe`` is how many legacy MessageIds are remembered
    to drop legacy re-sends (0 turns it off). ``drain_timeout`` bounds how long
    :meth:`close` waits for forwarded messages still awaiting their ack.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        codec: LegacyCodec,
        *,
        dedupe: int = 10_000,
        drain_timeout: float = 2.0,
    ) -> None:
        self.endpoint = endpoint
        self.codec = codec
        self.stats = BridgeStats()
        self.drain_timeout = drain_timeout
        self._dedupe = dedupe
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._replies: OrderedDict[tuple[str, str], list[bytes]] = OrderedDict()
        """The last replies of the REP side by (SenderId, MessageId), for re-sends."""
        self._sockets: list[LegacySocket] = []
        self._readers: list[asyncio.Task[None]] = []
        self._inflight: set[DeliveryReport] = set()
        self._consumed: set[str] = set()
        """Full names of the types the bridge takes for the legacy service."""
        self._ctx: zmq.asyncio.Context | None = None
        self._started = False

    # ------------------------------------------------------------------ configuration

    def subscribe(
        self,
        address: str,
        *,
        fmt: Format = LegacyFormat.ENVELOPE,
        topics: Iterable[bytes] = (b"",),
        bind: bool = False,
    ) -> LegacySocket:
        """Read what the legacy service publishes (SUB to its PUB) onto the bus."""
        return self._add(LegacySocket(SocketRole.SUB, address, fmt, bind, tuple(topics)))

    def pull(
        self, address: str, *, fmt: Format = LegacyFormat.ENVELOPE, bind: bool = False
    ) -> LegacySocket:
        """Read what the legacy service pushes (PULL from its PUSH) onto the bus."""
        return self._add(LegacySocket(SocketRole.PULL, address, fmt, bind))

    def serve_requests(
        self,
        address: str,
        responses: Mapping[MessageType, type[Message] | None] | None = None,
        *,
        fmt: Format = LegacyFormat.ENVELOPE,
        timeout: float = 5.0,
        bind: bool = True,
    ) -> LegacySocket:
        """Answer the legacy service's REQ socket: each request goes on the bus and the
        reply says how it went, so the legacy side finally gets an ack. A request type
        mapped to a response class is sent with ``ep.request`` and the response is the
        reply; any other is sent as a command (or event) and the reply is ``Ack``. A
        failure, or input that cannot be read, is answered with ``Nack`` (docs/legacy.md).
        ``timeout`` bounds each request's delivery; keep it below the legacy client's."""
        names = {self._name(t): resp for t, resp in (responses or {}).items()}
        return self._add(
            LegacySocket(SocketRole.REP, address, fmt, bind, types=names, timeout=timeout)
        )

    def publish_to(
        self,
        address: str,
        types: Iterable[MessageType],
        *,
        fmt: Format = LegacyFormat.ENVELOPE,
        bind: bool = True,
    ) -> LegacySocket:
        """Write bus messages of ``types`` to a PUB socket the legacy service subscribes
        to. Fire and forget: acked once in the socket (docs/legacy.md)."""
        names: dict[str, type[Message] | None] = {self._name(t): None for t in types}
        return self._add(LegacySocket(SocketRole.PUB, address, fmt, bind, types=names))

    def push_to(
        self,
        address: str,
        types: Iterable[MessageType],
        *,
        fmt: Format = LegacyFormat.ENVELOPE,
        bind: bool = False,
    ) -> LegacySocket:
        """Write bus messages of ``types`` to a PUSH socket feeding the legacy PULL.
        Acked once queued in the socket; refused with RetryLater while it cannot take
        them (no peer connected, or full), so the sender retries."""
        names: dict[str, type[Message] | None] = {self._name(t): None for t in types}
        return self._add(LegacySocket(SocketRole.PUSH, address, fmt, bind, types=names))

    def request_to(
        self,
        address: str,
        types: Mapping[MessageType, type[Message] | None],
        *,
        fmt: Format = LegacyFormat.ENVELOPE,
        timeout: float = 5.0,
        bind: bool = False,
        failure: Failure | None = None,
        error_field: str | None = None,
    ) -> LegacySocket:
        """Send bus messages of each request type to the legacy REP service, one at a
        time, and ack only once its reply came: the reply is the ack. With a reply
        class, the decoded reply is the handler's response (for ``ep.request``).

        A legacy REP often answers a failure with a reply too. ``failure`` reads each
        decoded reply (the reply class, else a typed or untyped message) and returns the
        failure's text, or ``None`` when the request succeeded; ``error_field`` names a
        field of the reply that is set (non-empty) exactly when it failed, its value the
        text. A failure reply refuses the bus message with a permanent ``Reject`` of that
        text, so the sender's report is ``Rejected`` (``remote_message`` the text) and is
        not retried: the legacy handler ran. ``failure`` may raise ``RetryLater`` or
        ``Reject(..., permanent=False)`` itself for a failure worth retrying."""
        if failure is not None and error_field is not None:
            raise ValueError("give failure= or error_field=, not both")
        names = {self._name(t): resp for t, resp in types.items()}
        if error_field is not None:
            for name, resp in names.items():
                if resp is not None and error_field not in resp.DESCRIPTOR.fields_by_name:
                    raise SchemaError(
                        f"error_field {error_field!r} is not a field of "
                        f"{resp.DESCRIPTOR.full_name}, the reply to {name}"
                    )
            failure = _field_failure(error_field)
        return self._add(
            LegacySocket(
                SocketRole.REQ, address, fmt, bind, types=names, timeout=timeout, failure=failure
            )
        )

    def _name(self, t: MessageType) -> str:
        if isinstance(t, str):
            spec = self.codec.registry.get(t)
            return spec.full_name if spec is not None else t
        return t.DESCRIPTOR.full_name

    def _add(self, side: LegacySocket) -> LegacySocket:
        if self._started:
            raise RuntimeError("configure the bridge's legacy sockets before starting it")
        self._sockets.append(side)
        return side

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Bridge:
        """Open the legacy sockets, register the outbound handlers, start the endpoint."""
        if self._started:
            return self
        self._started = True
        self._ctx = zmq.asyncio.Context()
        inbound = (SocketRole.SUB, SocketRole.PULL, SocketRole.REP)
        try:
            for side in self._sockets:
                self._open(side)
                if side.role not in inbound:  # handlers first: the HELLO names their types
                    for name, response in side.types.items():
                        self._register(side, name, response)
            await self.endpoint.start()
            for side in self._sockets:  # read only once there is an endpoint to send with
                if side.role in inbound:
                    read = self._serve(side) if side.role is SocketRole.REP else self._read(side)
                    task = asyncio.create_task(read, name=f"bridge-{side.role.value}")
                    self._readers.append(task)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop reading the legacy side, wait (up to ``drain_timeout``) for forwarded
        messages to be acked, close the endpoint and every socket. Idempotent."""
        for task in self._readers:
            task.cancel()
        if self._readers:
            await asyncio.wait(self._readers, timeout=1.0)
        self._readers.clear()
        if self._inflight and not self.endpoint.closed:
            waits = [asyncio.ensure_future(r.wait()) for r in self._inflight]
            await asyncio.wait(waits, timeout=self.drain_timeout)
            for w in waits:
                w.cancel()
        await self.endpoint.close()
        for side in self._sockets:
            if side.sock is not None:
                side.sock.close(linger=0)
                side.sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def __aenter__(self) -> Bridge:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self, side: LegacySocket) -> None:
        assert self._ctx is not None
        sock = self._ctx.socket(_ZMQ_TYPE[side.role])
        sock.linger = 0
        if side.role is SocketRole.SUB:
            for topic in side.topics:
                sock.setsockopt(zmq.SUBSCRIBE, topic)
        if side.role is SocketRole.PUSH:
            sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing to a peer that is not there
        if side.bind:
            sock.bind(side.address)
            side.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            sock.connect(side.address)
        side.sock = sock

    # ------------------------------------------------------------------ legacy → bus

    async def _read(self, side: LegacySocket) -> None:
        sock = side.sock
        assert sock is not None
        while True:
            frames = await sock.recv_multipart()  # the reader runs until close() cancels it
            self.stats.from_legacy += 1
            try:
                legacy = self.codec.decode(frames, side.fmt)
            except (LegacyFormatError, SchemaError) as exc:
                self._malformed(side, exc)
                continue
            if self._is_duplicate(legacy):
                self.stats.duplicates += 1
                continue
            if legacy.full_name in self._consumed:
                # The bridge itself takes this type for the legacy service: forwarding
                # it would bring it straight back. Only a misconfiguration does this.
                self._malformed(side, SchemaError(f"{legacy.full_name} would loop back"), "LOOP")
                continue
            try:
                await self._forward(legacy)
            except ClosedError:
                return
            except Exception as exc:  # SendWindowTimeout, a name the wire refuses, a bug
                self.stats.failed[type(exc).__name__] += 1
                log.warning("bridge %s: %s not forwarded: %s", side.address, legacy.type_name, exc)

    async def _serve(self, side: LegacySocket) -> None:
        """The REP loop: one request at a time, and every request gets a reply (a REP
        that does not answer blocks its legacy REQ for good)."""
        sock = side.sock
        assert sock is not None
        while True:
            frames = await sock.recv_multipart()  # the loop runs until close() cancels it
            self.stats.from_legacy += 1
            try:
                reply = await self._answer(side, frames)
            except ClosedError:
                reply = self._nack(side, "", "ClosedError", "the bridge is closing")
            except Exception as exc:  # a bug must not leave the legacy REQ hanging
                log.exception("bridge rep %s: request failed", side.address)
                reply = self._nack(side, "", type(exc).__name__, str(exc))
            await sock.send_multipart(reply)
            self.stats.to_legacy[side.role.value] += 1

    async def _answer(self, side: LegacySocket, frames: list[bytes]) -> list[bytes]:
        try:
            legacy = self.codec.decode(frames, side.fmt)
        except (LegacyFormatError, SchemaError) as exc:
            self._malformed(side, exc)
            code = "UNKNOWN_TYPE" if isinstance(exc, SchemaError) else exc.code
            return self._nack(side, "", code, str(exc))
        key = (legacy.sender, legacy.message_id)
        if legacy.message_id and key in self._replies:
            # A legacy client re-sending after its own timeout: same answer, no second run.
            self.stats.duplicates += 1
            self._replies.move_to_end(key)
            return self._replies[key]
        if legacy.full_name in self._consumed:
            self._malformed(side, SchemaError(f"{legacy.full_name} would loop back"), "LOOP")
            return self._nack(side, legacy.message_id, "LOOP", "the bridge takes this type")
        response = side.types.get(legacy.full_name)
        self.stats.forwarded += 1
        headers = _headers(legacy)
        if response is not None:
            try:
                got = await self.endpoint.request(
                    cast(Message, legacy.message), response, timeout=side.timeout, headers=headers
                )
            except DeliveryError as exc:
                self.stats.failed[type(exc).__name__] += 1
                reply = self._nack(side, legacy.message_id, type(exc).__name__, exc.reason)
            else:
                self.stats.delivered += 1
                reply = self.codec.encode(got, side.fmt)
        else:
            msg = legacy.message
            send = self.endpoint.publish if self._kind(msg) is Kind.EVENT else self.endpoint.send
            report = await send(msg, timeout=side.timeout, headers=headers)
            self._settled(report)
            if report:
                reply = self._ack(side, legacy.message_id)
            else:
                error = report.error
                why = error.reason if error is not None else "not delivered"
                reply = self._nack(side, legacy.message_id, type(error).__name__, why)
        if legacy.message_id and self._dedupe:
            self._replies[key] = reply
            if len(self._replies) > _REPLIES:
                self._replies.popitem(last=False)
        return reply

    def _ack(self, side: LegacySocket, message_id: str) -> list[bytes]:
        return self._reply(side, Untyped("Ack", {"MessageId": message_id, "Acked": True}))

    def _nack(self, side: LegacySocket, message_id: str, error: str, reason: str) -> list[bytes]:
        payload = {"MessageId": message_id, "Acked": False, "Error": error, "Reason": reason}
        return self._reply(side, Untyped("Nack", payload))

    def _reply(self, side: LegacySocket, msg: Untyped) -> list[bytes]:
        # Ack and Nack have no schema: a protobuf or custom socket gets [topic, JSON].
        fmt = side.fmt
        if not isinstance(fmt, LegacyFormat) or fmt is LegacyFormat.TOPIC_PROTOBUF:
            fmt = LegacyFormat.TOPIC_JSON
        return self.codec.encode(msg, fmt, sender=self.endpoint.identity.service)

    def _malformed(
        self, side: LegacySocket, exc: LegacyFormatError | SchemaError, code: str = ""
    ) -> None:
        code = code or ("UNKNOWN_TYPE" if isinstance(exc, SchemaError) else exc.code)
        self.stats.malformed[code] += 1
        log.warning("bridge %s %s: refused legacy input: %s", side.role.value, side.address, exc)

    def _is_duplicate(self, legacy: LegacyMessage) -> bool:
        if not self._dedupe or not legacy.message_id:
            return False
        key = (legacy.sender, legacy.message_id)
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        self._seen[key] = None
        if len(self._seen) > self._dedupe:
            self._seen.popitem(last=False)
        return False

    async def _forward(self, legacy: LegacyMessage) -> None:
        msg = legacy.message
        headers = _headers(legacy)
        if self._kind(msg) is Kind.EVENT:
            report = await self.endpoint.publish(msg, wait_ack=False, headers=headers)
        else:
            report = await self.endpoint.send(msg, wait_ack=False, headers=headers)
        self.stats.forwarded += 1
        self._inflight.add(report)
        report.add_done_callback(self._settled)

    def _kind(self, msg: Message | Untyped) -> Kind:
        if isinstance(msg, Untyped):
            spec = self.codec.registry.get(msg.type_name)
        else:
            spec = self.codec.registry.for_class(type(msg))
        return spec.policy.kind if spec is not None else Kind.COMMAND

    def _settled(self, report: DeliveryReport) -> None:
        self._inflight.discard(report)
        if report:
            self.stats.delivered += 1
        else:
            self.stats.failed[type(report.error).__name__] += 1
            log.warning("bridge: legacy message not delivered: %s", report.error)

    # ------------------------------------------------------------------ bus → legacy

    def _register(self, side: LegacySocket, name: str, response: type[Message] | None) -> None:
        spec = self.codec.registry.get(name)

        async def handle(msg: Any, ctx: Context) -> Message | None:
            if isinstance(msg, dict):
                msg = Untyped(name, msg)
            frames = self.codec.encode(
                msg,
                side.fmt,
                message_id=str(uuid.UUID(bytes=ctx.message_id)),  # the same on every retry
                sender=ctx.sender.service,
                timestamp=datetime.fromtimestamp(ctx.created_at, UTC),
            )
            return await self._write(side, frames, response)

        handle.__qualname__ = f"Bridge.{side.role.value}({side.address}).{name}"
        self._consumed.add(name)
        if spec is None:
            self.endpoint.register_handler(name, _no_response(handle))
        else:
            kind = spec.policy.kind
            self.endpoint.register_handler(spec.cls, handle, kind=kind, response=response)

    async def _write(
        self, side: LegacySocket, frames: list[bytes], response: type[Message] | None
    ) -> Message | None:
        sock = side.sock
        if sock is None:
            raise ClosedError("the bridge is closed")
        if side.role is SocketRole.REQ:
            # In a task of its own: the endpoint steps handlers eagerly outside any task,
            # and asyncio.timeout needs one. A REQ round trip dwarfs the task's cost.
            return await asyncio.create_task(self._request(side, frames, response))
        try:
            await sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            # PUSH with no connected peer (IMMEDIATE) or at its high-water mark: the
            # legacy side cannot take it now; the sender's retry tries again.
            self.stats.backpressure += 1
            raise RetryLater(
                0.2, f"legacy {side.role.value} {side.address} is not taking messages"
            ) from None
        self.stats.to_legacy[side.role.value] += 1
        return None

    async def _request(
        self, side: LegacySocket, frames: list[bytes], response: type[Message] | None
    ) -> Message | None:
        async with side.lock:  # REQ is lockstep: one request in flight per socket
            sock = side.sock
            assert sock is not None
            try:
                async with asyncio.timeout(side.timeout):
                    await sock.send_multipart(frames)
                    reply = await sock.recv_multipart()
            except TimeoutError:
                # A REQ that missed its reply is stuck; replace it (the Lazy Pirate way).
                sock.close(linger=0)
                self._open(side)
                self.stats.backpressure += 1
                raise RetryLater(
                    0.2, f"legacy REP {side.address} did not reply within {side.timeout} s"
                ) from None
        self.stats.to_legacy[side.role.value] += 1
        if response is None and side.failure is None:
            return None  # any reply is the ack
        try:
            got = self.codec.decode(reply, side.fmt)
        except (LegacyFormatError, SchemaError) as exc:
            self._malformed(side, exc)
            # The legacy handler ran: retrying would run it again. Refuse for good.
            raise Reject(f"legacy REP {side.address} sent an unreadable reply: {exc}") from None
        if response is not None and not isinstance(got.message, response):
            self.stats.malformed["WRONG_REPLY"] += 1
            raise Reject(
                f"legacy REP {side.address} replied {got.full_name}, "
                f"expected {response.DESCRIPTOR.full_name}"
            )
        if side.failure is not None:
            text = side.failure(got.message)
            if text is not None:
                self.stats.failure_replies += 1
                log.info("bridge req %s: the legacy reply says it failed: %s", side.address, text)
                raise Reject(text)  # permanent: the legacy handler ran
        return cast(Message, got.message) if response is not None else None


def _field_failure(name: str) -> Failure:
    """``error_field=name``: a reply fails when its field ``name`` is set (non-empty), the
    field's value its text. An untyped reply's payload key matches in any case."""

    def failure(reply: Message | Untyped) -> str | None:
        if isinstance(reply, Untyped):
            value = _lookup(reply.payload, name)
        else:
            value = getattr(reply, name, None)
        if not value:
            return None
        return str(value)

    return failure


def _headers(legacy: LegacyMessage) -> dict[str, str]:
    """The legacy metadata, as headers a handler reads from ``ctx.headers``."""
    headers = {}
    if legacy.message_id:
        headers[LEGACY_ID_HEADER] = legacy.message_id
    if legacy.sender:
        headers[LEGACY_SENDER_HEADER] = legacy.sender
    if legacy.timestamp is not None:
        headers[LEGACY_TIME_HEADER] = legacy.timestamp.isoformat()
    return headers


def _no_response(
    fn: Callable[[Any, Context], Coroutine[Any, Any, Message | None]],
) -> Callable[[dict[str, Any], Context], Coroutine[Any, Any, None]]:
    """A by-name (dict) handler returns nothing; the bridge's untyped route obeys."""

    async def handle(payload: dict[str, Any], ctx: Context) -> None:
        await fn(payload, ctx)

    handle.__qualname__ = getattr(fn, "__qualname__", "bridge")
    return handle
