"""Acknowledged sends from code that owns a plain, blocking pyzmq DEALER socket.

Legacy code often holds a ``zmq.Socket`` and sends on it directly, with no event
loop. :class:`ReliableSocket` lets it keep that socket and still get ackbus's
guarantee: it speaks the wire protocol (docs/protocol.md) to a hub over the
caller's DEALER — HELLO, MESSAGE, ACK, ROUTED, REFUSAL — and retries each message
with the same id, exponential backoff and jitter until a handler acked it, its
attempts or deadline ran out, or it was refused. The receiver deduplicates by id, so
a retry never runs a handler twice. It is the Python counterpart of the C# original's
``MessageBrokerExtensions`` (:func:`send_with_ack` is the one-call form).

Blocking and single-threaded, like the socket it wraps: every call returns within
its message's deadline. It sends only; it handles no messages (its HELLO declares
none). Give the socket a fixed ``ROUTING_ID`` before connecting if acks should
survive a hub restart mid-send (otherwise the retry after the restart is acked).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
import weakref
from collections.abc import Mapping
from typing import Any, TypeVar

import zmq
from google.protobuf.message import Message

from .. import envelope_pb2, wire_pb2
from .._types import DeliveryReport, DeliveryStatus, Identity, Policy, Registry, Untyped
from .._untyped import encode_untyped
from ..endpoint import JSON_ENCODING
from ..errors import (
    AckTimeout,
    ConnectTimeout,
    DeliveryError,
    Expired,
    NoRoute,
    Rejected,
    RemoteProtocolError,
)
from ..wire import (
    FLAG_REQUEST,
    KIND_COMMAND,
    KIND_EVENT,
    NOT_REGISTERED,
    PROTOCOL_VERSION,
    Command,
    decode_command,
    decode_identity,
    decode_refusal,
    decode_routed,
    decode_welcome,
    encode_bye,
    encode_heartbeat,
    encode_hello,
    encode_message,
    encode_messages,
    reattempt,
    split_acks,
)

__all__ = ["ReliableSocket", "send_with_ack"]

R = TypeVar("R", bound=Message)

_OK = (envelope_pb2.OK, envelope_pb2.DUPLICATE)


class _Pending:
    """What is known of the one message in flight."""

    __slots__ = (
        "acked_by",
        "error",
        "id",
        "kind",
        "reregister",
        "response",
        "retry_after",
        "targets",
    )

    def __init__(self, mid: bytes, kind: int) -> None:
        self.id = mid
        self.kind = kind
        self.acked_by: dict[str, Identity] = {}
        self.targets: set[str] | None = None if kind == KIND_EVENT else {"*"}
        """Whose acks settle it: ``{"*"}`` (anyone: a command), the services the hub
        fanned an event out to, or ``None`` until the hub said (ROUTED)."""
        self.error: DeliveryError | None = None
        self.retry_after: float | None = None
        """Set when the receiver or hub asked for a retry (seconds to wait)."""
        self.reregister = False
        self.response: bytes | None = None

    def reset(self) -> None:
        """Forget the last attempt's verdict (acks stay: an event's acks add up)."""
        self.error = None
        self.retry_after = None
        self.reregister = False

    def acked(self) -> bool:
        if self.targets is None:
            return False  # an event: wait for the hub's ROUTED notice
        if "*" in self.targets:
            return bool(self.acked_by)
        return all(t in self.acked_by for t in self.targets)

    def ack(self, who: Identity) -> None:
        self.acked_by[who.service] = who
        self.acked_by[str(who)] = who


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
        self.sock = sock
        self.identity = Identity(service, instance or uuid.uuid4().hex)
        self.registry = registry if registry is not None else Registry()
        self.policy = policy or Policy()
        self.heartbeat = heartbeat
        self.welcomed = False
        self.retries = 0
        self._rng = random.Random(seed)
        self._last_sent = 0.0
        env = envelope_pb2.Envelope()
        env.sender.service = service
        env.sender.instance = self.identity.instance
        self._envelope = env

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
            self.welcomed = False

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
            pol = pol.with_(deadline=min(pol.deadline, timeout))
        env = envelope_pb2.Envelope()
        env.CopyFrom(self._envelope)
        env.headers.update(headers or {})
        if json_body:
            env.content_encoding = JSON_ENCODING
        mid = os.urandom(16)
        now_ns = time.time_ns()
        frame = encode_message(
            mid,
            type_name,
            body,
            envelope=env.SerializeToString(),
            recipient=to or "",
            kind=kind,
            priority=pol.priority,
            flags=FLAG_REQUEST if request else 0,
            created_at_ns=now_ns,
            sent_at_ns=now_ns,
            deadline_ns=now_ns + int(pol.deadline * 1e9),
        )
        report = DeliveryReport(mid, type_name)
        deadline = time.monotonic() + pol.deadline
        pending = _Pending(mid, kind)
        first_sent = time.time()
        attempt = 0
        last: DeliveryError = AckTimeout("no acknowledgement", message_id=mid)
        while attempt < pol.max_attempts and time.monotonic() < deadline:
            try:
                self._hello(deadline)
            except ConnectTimeout as exc:
                last = AckTimeout(str(exc), message_id=mid, message_type=type_name)
                break
            attempt += 1
            if attempt > 1:
                self.retries += 1
            out = frame if attempt == 1 else reattempt(frame, attempt, time.time_ns())
            self._send(encode_messages([(b"", [out])]))
            pending.reset()
            self._pump(pending, min(deadline, time.monotonic() + pol.ack_timeout))
            if pending.acked():
                return _acked(report, pending, attempt, first_sent)
            if pending.error is not None:
                last = pending.error
                if not _retryable(last, pol):
                    break
            if pending.reregister:
                continue  # the hub forgot us: HELLO again and retry at once
            pause = pending.retry_after
            if pause is None:
                base = min(pol.backoff_cap, pol.backoff_base * 2 ** (attempt - 1))
                pause = base * self._rng.uniform(1 - pol.jitter, 1 + pol.jitter)
            pending.reset()
            self._pump(pending, min(deadline, time.monotonic() + pause))  # late acks count
            if pending.acked():
                return _acked(report, pending, attempt, first_sent)
        last.message_type = last.message_type or type_name
        last.message_id = mid
        if isinstance(last, AckTimeout) and attempt:
            last.reason = f"no acknowledgement after {attempt} attempt{'s' * (attempt != 1)}"
        report._settle(
            DeliveryStatus.FAILED, attempts=attempt, first_sent_at=first_sent, error=last
        )
        return report

    # ------------------------------------------------------------------ the socket

    def _send(self, frames: list[bytes]) -> None:
        # Not connected, or full: the attempt is lost and the retry timer covers it.
        with contextlib.suppress(zmq.Again):
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
        self._last_sent = time.monotonic()

    def _hello(self, deadline: float) -> None:
        """Say HELLO until the hub welcomes us (ConnectTimeout at ``deadline``)."""
        while not self.welcomed:
            hello = wire_pb2.Hello(
                heartbeat_ms=int(self.heartbeat * 1000), versions=[PROTOCOL_VERSION]
            )
            hello.identity.service = self.identity.service
            hello.identity.instance = self.identity.instance
            self._send(encode_hello(hello))
            now = time.monotonic()
            if now >= deadline:
                raise ConnectTimeout(f"{self.identity}: no hub welcomed us in time")
            self._pump(None, min(deadline, now + 0.5))

    def _pump(self, pending: _Pending | None, until: float) -> None:
        """Read what the hub sends until ``until``, or until ``pending`` is settled or
        needs a retry (or, with no pending message, until welcomed)."""
        sock = self.sock
        while True:
            if pending is None and self.welcomed:
                return
            if pending is not None and (
                pending.acked()
                or pending.error is not None
                or pending.retry_after is not None
                or pending.reregister
            ):
                return
            now = time.monotonic()
            if now >= until:
                return
            if self.welcomed and now - self._last_sent >= self.heartbeat:
                self._send(encode_heartbeat())
            wait = min(until - now, self.heartbeat)
            if not sock.poll(max(1, int(wait * 1000)), zmq.POLLIN):
                continue
            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            try:
                self._on_frames(frames, pending)
            except RemoteProtocolError:
                continue  # garbage from the hub: ignored, as the endpoint would refuse it

    def _on_frames(self, frames: list[bytes], pending: _Pending | None) -> None:
        cmd = decode_command(frames)
        if cmd is Command.WELCOME:
            decode_welcome(frames)
            self.welcomed = True
        elif cmd is Command.REFUSAL:
            refusal = decode_refusal(frames)
            if refusal.code == NOT_REGISTERED:
                self.welcomed = False
                if pending is not None:
                    pending.reregister = True
            elif pending is not None and refusal.message_id == pending.id:
                pending.error = Rejected(
                    f"refused by the hub: {refusal}",
                    remote_type="RemoteProtocolError",
                    remote_message=str(refusal),
                    permanent=True,
                )
        elif cmd is Command.ROUTED and pending is not None:
            for entry in decode_routed(frames):
                if entry.message_id == pending.id:
                    pending.targets = set(entry.targets)
        elif cmd is Command.ACK and pending is not None:
            for group in split_acks(frames):
                who = Identity(*decode_identity(group.peer))
                if pending.id in group.ok_ids:
                    pending.ack(who)
                for ack in group.full_acks() if group.full else ():
                    if ack.message_id == pending.id:
                        self._on_full_ack(pending, ack, who)

    def _on_full_ack(self, pending: _Pending, ack: envelope_pb2.Ack, who: Identity) -> None:
        outcome = ack.outcome
        if ack.HasField("receiver"):
            who = Identity(ack.receiver.service, ack.receiver.instance)
        if outcome in _OK:
            pending.response = ack.response if ack.response or ack.response_type else None
            pending.ack(who)
        elif outcome == envelope_pb2.RETRY_LATER:
            pending.retry_after = ack.retry_after_ms / 1000
        elif outcome == envelope_pb2.NO_ROUTE:
            pending.error = NoRoute(ack.error.message or "no live service handles it")
        elif outcome == envelope_pb2.EXPIRED:
            pending.error = Expired("expired before a handler ran")
        else:
            pending.error = Rejected(
                f"rejected by the receiver: {ack.error.type}: {ack.error.message}",
                remote_type=ack.error.type,
                remote_message=ack.error.message,
                permanent=ack.error.permanent,
            )


def _retryable(error: DeliveryError, policy: Policy) -> bool:
    """NO_ROUTE waits for a receiver to appear; a transient rejection is retried only
    under a ``retry_rejected`` policy; anything else is final."""
    if isinstance(error, NoRoute):
        return True
    return isinstance(error, Rejected) and not error.permanent and policy.retry_rejected


def _acked(report: DeliveryReport, p: _Pending, attempts: int, first_sent: float) -> DeliveryReport:
    report._settle(
        DeliveryStatus.ACKED,
        attempts=attempts,
        first_sent_at=first_sent,
        acked_at=time.time(),
        acked_by=tuple(dict.fromkeys(p.acked_by.values())),
        response=p.response,
    )
    return report


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
