"""Acknowledged sends from code that owns a plain, blocking pyzmq DEALER socket.

Legacy code often holds a ``zmq.Socket`` and sends on it directly, with no event
loop. :class:`ReliableSocket` lets it keep that socket and still get ackbus's
guarantee: it speaks the wire protocol (docs/protocol.md) to a hub over the
caller's DEALER — HELLO, MESSAGE, ACK, ROUTED, REFUSAL — and retries each message
with the same id, exponential backoff and jitter until a handler acked it, its
attempts or deadline ran out, or it was refused. The receiver deduplicates by id, so
a retry never runs a handler twice. It is the Python counterpart of the C# original's
``MessageBrokerExtensions`` (:func:`send_with_ack` is the one-call form).

It decides nothing itself: it is a blocking driver of the endpoint protocol
(:class:`~ackbus.core.endpoint_protocol.EndpointProtocol`, one per socket, the socket
its only hub link), as the asyncio endpoint is an asyncio one. Retries, backoff,
deadlines, the HELLO/WELCOME handshake, HELLO again after ``NOT_REGISTERED``,
heartbeats and the error of a failed message are the protocol's; the socket builds
frames, carries out the protocol's actions with the wire, and polls the socket until
the protocol's next deadline or the message's, whichever comes first.

Blocking and single-threaded, like the socket it wraps: every call returns within
its message's deadline. It sends only; it handles no messages (its HELLO declares
none, so the protocol answers any message a hub sends it with NO_ROUTE). Give the
socket a fixed ``ROUTING_ID`` before connecting if acks should survive a hub restart
mid-send (otherwise the retry after the restart is acked).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import zmq
from google.protobuf.message import Message

from .. import wire_pb2
from .._pending import attempt_frame, settle_acked, settle_failed
from .._types import DeliveryReport, Identity, Policy, Registry, Untyped
from .._untyped import encode_untyped
from ..core import Completion
from ..core._values import capped
from ..core.endpoint_protocol import AckReply, EndpointProtocol, InboundItem
from ..errors import DeliveryError, RemoteProtocolError
from ..wire import (
    FLAG_REQUEST,
    KIND_COMMAND,
    KIND_EVENT,
    SUPPORTED_VERSIONS,
    Command,
    ack_replies,
    check_name,
    decode_bye,
    decode_command,
    decode_identity,
    decode_messages,
    decode_refusal,
    decode_routed,
    decode_welcome,
    encode_ack,
    encode_acks,
    encode_bye,
    encode_envelope,
    encode_heartbeat,
    encode_hello,
    encode_message,
    encode_messages,
    full_acks_frame,
    ok_ids_frame,
    split_acks,
)

__all__ = ["ReliableSocket", "send_with_ack"]

log = logging.getLogger("ackbus.legacy")

R = TypeVar("R", bound=Message)

_HUB = 0
"""The index of the socket's one hub link in its protocol."""
_GUARD = 1.0
"""Seconds past a message's deadline after which a call gives up on it even if the
protocol has not settled it (it settles every message by its deadline; this only
guards against a bug leaving a call blocked for good)."""


class ReliableSocket:
    """Acknowledged sends over ``sock``, a DEALER the caller created and connected to
    a hub (and still owns: :meth:`close` says goodbye but leaves the socket open).

    ``service`` names the sender on the bus. Policies come from ``registry`` for types
    it knows, else ``policy``. Not thread safe, like ``sock`` itself.
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        service: str,
        *,
        instance: str | None = None,
        registry: Registry | None = None,
        policy: Policy | None = None,
        heartbeat: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if sock.type != zmq.DEALER:
            raise ValueError("ReliableSocket needs a DEALER socket connected to a hub")
        check_name(service, "service name")  # LocalProtocolError: a hub would refuse it
        self.sock = sock
        self.identity = Identity(service, instance or uuid.uuid4().hex)
        self.registry = registry if registry is not None else Registry()
        self.policy = policy or Policy()
        self.heartbeat = heartbeat
        self._wall_offset = time.time() - time.monotonic()
        self._proto = EndpointProtocol(
            self.identity, self, heartbeat=heartbeat, seed=seed, wall_offset=self._wall_offset
        )
        self._proto.add_hub()
        self._pending: dict[bytes, DeliveryReport] = {}
        """The report of the message in flight (the protocol's ``transmit`` re-sends
        its frame)."""
        self._interval = heartbeat
        """The heartbeat interval the hub's WELCOME agreed on."""
        self._last_sent: float | None = None
        """When we last sent the hub anything; None before the first HELLO."""

    @property
    def welcomed(self) -> bool:
        """Whether the hub welcomed this socket (and has not refused or left it since)."""
        return self._proto.welcomed(_HUB)

    @property
    def retries(self) -> int:
        """Attempts after the first, over all messages sent."""
        return self._proto.stats.retries

    # ------------------------------------------------------------------ public

    def send(
        self,
        msg: Message | Untyped,
        *,
        timeout: float | None = None,
        to: str | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
    ) -> DeliveryReport:
        """Send a command and block until it is acked or failed (never past its
        deadline, which ``timeout`` caps). The report is truthy once acked."""
        return self._deliver(msg, KIND_COMMAND, timeout, to, headers, policy, request=False)

    def publish(
        self,
        event: Message | Untyped,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
    ) -> DeliveryReport:
        """Publish an event; acked once every subscribed service acked it (at once
        when none subscribes)."""
        return self._deliver(event, KIND_EVENT, timeout, None, headers, policy, request=False)

    def request(
        self,
        msg: Message | Untyped,
        response_type: type[R],
        *,
        timeout: float | None = None,
        to: str | None = None,
        policy: Policy | None = None,
    ) -> R:
        """Send a command whose handler returns a ``response_type``; return it, or
        raise the report's :class:`~ackbus.DeliveryError`."""
        report = self._deliver(msg, KIND_COMMAND, timeout, to, None, policy, request=True)
        report.raise_for_status()
        response = response_type()
        try:
            response.ParseFromString(report.response or b"")
        except Exception as exc:  # DecodeError: the responder's bug, reported as such
            raise RemoteProtocolError(
                f"undecodable {response_type.DESCRIPTOR.full_name} response: {exc}",
                message_id=report.message_id,
            ) from None
        return response

    def close(self) -> None:
        """Say BYE to the hub (the socket stays the caller's to close)."""
        if self.welcomed:
            self._send(encode_bye("closing"))
        self._proto.connected(_HUB, time.monotonic(), up=False)
        self._last_sent = None  # a later call says HELLO again

    # ------------------------------------------------------------------ delivery

    def _body(
        self, msg: Message | Untyped, policy: Policy | None
    ) -> tuple[str, bytes, bool, Policy]:
        if not isinstance(msg, Untyped):
            spec = self.registry.for_class(type(msg))
            pol = policy or (spec.policy if spec is not None else self.policy)
            return msg.DESCRIPTOR.full_name, msg.SerializeToString(), False, pol
        return encode_untyped(self.registry, msg, policy, self.policy)

    def _deliver(
        self,
        msg: Message | Untyped,
        kind: int,
        timeout: float | None,
        to: str | None,
        headers: Mapping[str, str] | None,
        policy: Policy | None,
        *,
        request: bool,
    ) -> DeliveryReport:
        type_name, body, json_body, pol = self._body(msg, policy)
        if timeout is not None:
            pol = capped(pol, timeout)
        mid = os.urandom(16)
        now = time.monotonic()
        now_ns = int((now + self._wall_offset) * 1e9)
        report = DeliveryReport(mid, type_name)
        report._frame = encode_message(
            mid,
            type_name,
            body,
            envelope=encode_envelope(self.identity, headers=headers, json_body=json_body),
            recipient=to or "",
            kind=kind,
            priority=pol.priority,
            flags=FLAG_REQUEST if request else 0,
            created_at_ns=now_ns,
            sent_at_ns=now_ns,
            deadline_ns=now_ns + int(pol.life * 1e9),
        )
        self._register(now)
        self._pending[mid] = report
        self._proto.submit(mid, type_name, to or type_name, pol, now, kind == KIND_EVENT)
        self._run(report, now + pol.life + _GUARD)
        return report

    def _register(self, now: float) -> None:
        """Read what arrived since the last call, then say HELLO if the hub may not
        know us: before the first message, after :meth:`close`, and after a silence
        longer than one heartbeat interval. This socket is read and written only
        during calls, so between them it sends no heartbeats, and a hub forgets a
        peer silent for a few intervals: saying HELLO with the message spares the
        message a NOT_REGISTERED refusal and a retry an ack timeout later."""
        self._receive(now)
        last = self._last_sent
        if last is None or now - last > self._interval:
            self._proto.connected(_HUB, now, up=False)
            self._proto.connected(_HUB, now)

    def _run(self, report: DeliveryReport, give_up: float) -> None:
        """Drive the protocol until ``report`` is settled: poll the socket until the
        protocol's next deadline, feed it what arrives, tick it when due."""
        proto = self._proto
        poll = self.sock.poll
        while not report.done:
            now = time.monotonic()
            due = proto.next_deadline()
            if due is not None and due <= now:
                proto.tick(now)
                continue
            if now >= give_up:  # pragma: no cover - would be a tracker bug
                proto.cancel(report.message_id, now, "the tracker never settled it")
                return
            until = give_up if due is None else min(due, give_up)
            if poll(math.ceil((until - now) * 1000), zmq.POLLIN):
                self._receive(time.monotonic())

    # ------------------------------------------------------------------ the socket

    def _send(self, frames: list[bytes]) -> None:
        # Not connected, or full: the attempt is lost and the retry timer covers it.
        with contextlib.suppress(zmq.Again):
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
        self._last_sent = time.monotonic()

    def _receive(self, now: float) -> None:
        """Feed the protocol everything the hub sent that is waiting, as one batch."""
        sock = self.sock
        proto = self._proto
        proto.begin_batch(_HUB, now)
        try:
            while True:
                try:
                    frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    return
                try:
                    self._handle(frames, now)
                except RemoteProtocolError as exc:
                    # Garbage from the hub: ignored (the message's timers cover a
                    # lost ack), as it always was here.
                    log.debug("%s: ignored input from the hub: %s", self.identity, exc)
        finally:
            proto.end_batch()

    def _handle(self, frames: list[bytes], now: float) -> None:
        """Decode one multipart from the hub and tell the protocol."""
        cmd = decode_command(frames)
        proto = self._proto
        if cmd is Command.ACK:
            for group in split_acks(frames):
                who = Identity(*decode_identity(group.peer))
                proto.on_acks(who, group.ok_ids, ack_replies(group, who), now)
        elif cmd is Command.ROUTED:
            for entry in decode_routed(frames):
                proto.on_routed(entry.message_id, entry.targets, now, entry.implements)
        elif cmd is Command.WELCOME:
            welcome = decode_welcome(frames)
            self._interval = max(welcome.heartbeat_ms, 1) / 1000
            hub = Identity(welcome.hub.service, welcome.hub.instance)
            proto.on_welcome(_HUB, welcome.heartbeat_ms, now, hub)
        elif cmd is Command.REFUSAL:
            refusal = decode_refusal(frames)
            proto.on_refusal(_HUB, refusal.code, refusal.message_id, str(refusal), now)
        elif cmd is Command.MESSAGE:
            for item in decode_messages(frames):
                # No types declared: the protocol answers each (NO_ROUTE), none runs.
                proto.accept(_HUB, item, now)
        elif cmd is Command.BYE:
            decode_bye(frames)
            proto.on_bye(_HUB)
        # HEARTBEAT: hearing anything is all liveness needs (begin_batch).

    # ------------------------------------------------------------------ the protocol's actions
    # (EndpointIO: what the protocol decided, encoded with the wire and sent on the socket)

    def transmit(self, hub: int, msg_id: bytes, attempt: int, now: float) -> None:
        frame = attempt_frame(self._pending, msg_id, attempt, now + self._wall_offset)
        if frame is not None:
            self._send(encode_messages([(b"", [frame])]))

    def send_acks(self, hub: int, msg_ids: list[bytes], peer: bytes) -> None:
        self._send(encode_acks([(peer, ok_ids_frame(msg_ids), b"")]))

    def send_ack(self, hub: int, ack: AckReply, peer: bytes) -> None:
        self._send(encode_acks([(peer, b"", full_acks_frame([encode_ack(ack)]))]))

    def send_hello(self, hub: int) -> None:
        hello = wire_pb2.Hello(
            heartbeat_ms=int(self.heartbeat * 1000), versions=list(SUPPORTED_VERSIONS)
        )
        hello.identity.service = self.identity.service
        hello.identity.instance = self.identity.instance
        self._send(encode_hello(hello))

    def send_heartbeat(self, hub: int) -> None:
        self._send(encode_heartbeat())

    def acked(self, completions: Sequence[Completion]) -> None:
        settle_acked(self._pending, completions, self._wall_offset)

    def failed(self, c: Completion, error: DeliveryError) -> None:
        settle_failed(self._pending, c, error, self._wall_offset)

    def start_waiting(self, hub: int, item: InboundItem, now: float) -> None:
        raise AssertionError("a ReliableSocket runs no handlers: nothing waits to start")

    def hub_silent(self, hub: int, silence: float) -> None:
        log.warning("%s: hub silent for %.1f s", self.identity, silence)


_sockets: weakref.WeakKeyDictionary[zmq.Socket[Any], ReliableSocket] = weakref.WeakKeyDictionary()


def send_with_ack(
    sock: zmq.Socket[Any],
    msg: Message | Untyped,
    *,
    service: str,
    timeout: float = 5.0,
    registry: Registry | None = None,
    policy: Policy | None = None,
) -> DeliveryReport:
    """Send ``msg`` over the caller's DEALER ``sock`` (connected to a hub) and block
    until it is acked or failed; the report is truthy once acked. The first call for
    a socket says HELLO as ``service``; later calls reuse that registration (a
    ``registry`` or ``policy`` passed later replaces the earlier one)."""
    rs = _sockets.get(sock)
    if rs is None or rs.identity.service != service:
        rs = _sockets[sock] = ReliableSocket(sock, service, registry=registry, policy=policy)
    else:
        rs.registry = registry if registry is not None else rs.registry
        rs.policy = policy or rs.policy
    return rs.send(msg, timeout=timeout)
