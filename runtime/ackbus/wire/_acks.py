"""Full acknowledgements between the wire's ``ackbus.Ack`` protobuf and the core's
plain :class:`~ackbus.core.endpoint_protocol.AckReply`."""

from __future__ import annotations

import time

from .. import envelope_pb2
from ..core import Identity, Outcome, RemoteError
from ..core.endpoint_protocol import AckReply
from ._control import AckGroup

__all__ = ["ack_replies", "encode_ack"]


def encode_ack(a: AckReply) -> bytes:
    """A serialized ``ackbus.Ack`` for ``a``, stamped with the time now."""
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


def ack_replies(group: AckGroup) -> list[AckReply]:
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
