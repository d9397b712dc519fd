"""Full acknowledgements: the wire's ``ackbus.Ack`` protobuf built from plain values
(:func:`encode_full_ack`, for any driver; :func:`encode_ack` from the core's
:class:`~ackbus.core.endpoint_protocol.AckReply`) and read back into ``AckReply`` values."""

from __future__ import annotations

import time

from .. import envelope_pb2
from ..core import Identity, Outcome, RemoteError
from ..core.endpoint_protocol import AckReply
from ._control import AckGroup

__all__ = ["ack_replies", "encode_ack", "encode_full_ack"]


def encode_full_ack(
    message_id: bytes,
    outcome: Outcome,
    *,
    receiver: Identity | None = None,
    acked_at_ns: int = 0,
    error: RemoteError | None = None,
    retry_after: float = 0.0,
    response: bytes = b"",
    response_type: str = "",
    attempt: int = 0,
    deferred: bool = False,
) -> bytes:
    """A serialized full :class:`Ack` for one message.

    ``receiver`` is who acks (an instance, or a hub answering for it); ``acked_at_ns`` Unix
    time in ns (0: not given); ``error`` what a handler or the hub reports; ``retry_after``
    seconds the sender should pause (whole ms on the wire; 0: none given); ``response`` and
    ``response_type`` a request's answer; ``attempt`` the attempt a no-route,
    retry-later or expired answer is about (0: not said); ``deferred`` marks a hub's
    retry-later that routed nothing (the attempt is not spent)."""
    ack = envelope_pb2.Ack(message_id=message_id, outcome=envelope_pb2.Outcome.ValueType(outcome))
    if receiver is not None:
        ack.receiver.service = receiver.service
        ack.receiver.instance = receiver.instance
    if acked_at_ns:
        ack.acked_at_ns = acked_at_ns
    if error is not None:
        ack.error.type = error.type
        ack.error.message = error.message
        ack.error.permanent = error.permanent
    if retry_after:
        ack.retry_after_ms = int(retry_after * 1000)
    if response or response_type:
        ack.response = response
        ack.response_type = response_type
    if attempt:
        ack.attempt = attempt
    if deferred:
        ack.deferred = True
    return ack.SerializeToString()


def encode_ack(a: AckReply) -> bytes:
    """A serialized ``ackbus.Ack`` for ``a``, stamped with the time now."""
    return encode_full_ack(
        a.msg_id,
        a.outcome,
        receiver=a.receiver,
        acked_at_ns=time.time_ns(),
        error=a.error,
        retry_after=a.retry_after,
        response=a.response,
        response_type=a.response_type,
        attempt=a.attempt,
        deferred=a.deferred,
    )


_OUTCOMES: frozenset[int] = frozenset(Outcome)


def ack_replies(group: AckGroup, receiver: Identity | None = None) -> list[AckReply]:
    """A group's full acks as plain values (most groups have none). ``receiver``: the
    identity the hub stamped on the group (its peer frame), which replaces what each
    ack says of its receiver: that is written by whoever sent it.

    An ack whose outcome this version does not know (a newer peer's, or garbage) is
    left out, as the tracker would ignore it (docs/protocol.md, ACK): proto3 enums are
    open, so any number parses, and ``Outcome(n)`` would raise ``ValueError``."""
    if not group.full:
        return []
    out = []
    for ack in group.full_acks():
        if ack.outcome not in _OUTCOMES:
            continue
        error = None
        if ack.HasField("error"):
            error = RemoteError(ack.error.type, ack.error.message, ack.error.permanent)
        who = receiver
        if who is None and ack.HasField("receiver"):
            who = Identity(ack.receiver.service, ack.receiver.instance)
        out.append(
            AckReply(
                ack.message_id,
                Outcome(ack.outcome),
                who,
                error,
                ack.retry_after_ms / 1000,
                ack.response,
                ack.response_type,
                ack.attempt,
                ack.deferred,
            )
        )
    return out
