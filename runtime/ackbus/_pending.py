"""Pending delivery reports, re-sent and settled as the endpoint protocol decides.

A driver of :class:`~ackbus.core.endpoint_protocol.EndpointProtocol` keeps the
:class:`~ackbus._types.DeliveryReport` of each message it sent and the protocol has not
yet settled, by message id; a pending report carries its frame. When the protocol calls
the driver's ``transmit``, :func:`attempt_frame` gives the frame of that attempt; when it
calls ``acked`` or ``failed``, :func:`settle_acked` and :func:`settle_failed` settle the
reports from the tracker's completions, with the protocol's monotonic times turned into
Unix time by the driver's ``wall_offset``. The asyncio endpoint and the legacy reliable
socket both do it through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._report import DeliveryReport, DeliveryStatus
from .core import Completion
from .errors import DeliveryError
from .wire import reattempt

__all__ = ["attempt_frame", "settle_acked", "settle_failed"]


def attempt_frame(
    pending: dict[bytes, DeliveryReport], msg_id: bytes, attempt: int, wall_now: float
) -> bytes | None:
    """The frame of attempt ``attempt`` of pending message ``msg_id``, sent at Unix time
    ``wall_now`` (None if it is not pending)."""
    report = pending.get(msg_id)
    if report is None:  # pragma: no cover - the tracker only transmits pending ids
        return None
    if attempt == 1:
        return report._frame
    return reattempt(report._frame, attempt, int(wall_now * 1e9))


def settle_acked(
    pending: dict[bytes, DeliveryReport],
    completions: Sequence[Completion],
    wall_offset: float,
    reports: list[DeliveryReport] | None = None,
) -> list[bytes]:
    """Settle the pending reports of acked ``completions`` (removed from ``pending``);
    return the ids of those settled, and append their reports to ``reports`` if given.
    One loop for an ACK group's worth, as a pipelined sender settles tens of thousands
    a second."""
    acked: list[bytes] = []
    for c in completions:
        report = pending.pop(c.msg_id, None)
        if report is None:
            continue
        acked.append(c.msg_id)
        if reports is not None:
            reports.append(report)
        report._frame = b""  # a report the caller keeps must not keep the message
        report._body = None
        report._settle(  # positional: once per acked message
            DeliveryStatus.ACKED,
            c.attempts,
            c.first_sent_at + wall_offset if c.first_sent_at is not None else None,
            c.acked_at + wall_offset if c.acked_at is not None else None,
            c.acked_by,
            None,
            c.response,
        )
    return acked


def settle_failed(
    pending: dict[bytes, DeliveryReport], c: Completion, error: DeliveryError, wall_offset: float
) -> DeliveryReport | None:
    """Settle the pending report of failed ``c`` with ``error`` (removed from
    ``pending``); return it, or None if it was not pending."""
    report = pending.pop(c.msg_id, None)
    if report is None:
        return None
    report._frame = b""
    report._body = None
    # The protocol tracks a message by the rpc it names, if any: the error names its type.
    error.message_type = report.message_type
    report._settle(
        DeliveryStatus.FAILED,
        attempts=c.attempts,
        first_sent_at=c.first_sent_at + wall_offset if c.first_sent_at is not None else None,
        acked_by=c.acked_by,
        error=error,
    )
    return report
