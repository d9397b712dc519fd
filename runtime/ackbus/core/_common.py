"""Values shared by the core state machines: receiver outcomes and remote errors.

:class:`Outcome` mirrors ``ackbus.envelope_pb2.Outcome`` number for number (a test checks
it), so the core never needs protobuf objects on its hot path: the wire layer converts an
``Ack`` into plain values once and passes those in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Outcome", "RemoteError"]


class Outcome(enum.IntEnum):
    """What became of a message at its receiver (or at the hub)."""

    UNSPECIFIED = 0
    OK = 1
    """The handler ran and returned."""
    DUPLICATE = 2
    """Already handled; the handler did not run again."""
    REJECTED = 3
    """The handler raised; the ack carries a :class:`RemoteError`."""
    RETRY_LATER = 4
    """The receiver asks for a retry after ``retry_after`` seconds."""
    NO_ROUTE = 5
    """No live service handles the type (said by the hub)."""
    EXPIRED = 6
    """The deadline passed before the handler ran."""
    IN_PROGRESS = 7
    """The handler is running: the sender re-arms its ack timeout without spending an
    attempt (the receiver says so while the handler runs, and to a retry)."""
    HELD = 8
    """Held at the hub until an instance has room under its max_concurrency: the sender
    spends no attempt and waits the longer of its ack timeout and ``retry_after``."""


@dataclass(frozen=True, slots=True)
class RemoteError:
    """The error a receiving handler raised, as its sender is told."""

    type: str
    message: str
    permanent: bool = False
    """True when retrying cannot help; a permanent rejection is never retried."""

    def __str__(self) -> str:
        kind = "permanent" if self.permanent else "transient"
        return f"{self.type}: {self.message} ({kind})"
