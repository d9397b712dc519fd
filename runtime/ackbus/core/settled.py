"""The values the outbound tracker hands out: what it decided for a message, where a
message is, and how it settled (:class:`Completion`). Plain values, no behaviour beyond
reading them; :mod:`ackbus.core.tracker` re-exports them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._common import RemoteError
from ._values import Identity

__all__ = [
    "Admit",
    "Completion",
    "GaveUp",
    "MsgState",
    "Reason",
    "Status",
    "TrackerAction",
    "Transmit",
]


class Admit(enum.Enum):
    """What :meth:`OutboundTracker.submit` decided."""

    SEND = "send"
    """Transmit attempt 1 now; the tracker already counts it as sent at ``now``."""
    QUEUED = "queued"
    """The destination's window is full; a :class:`Transmit` follows from a later tick."""


class Status(enum.Enum):
    ACKED = "acked"
    FAILED = "failed"


class Reason(enum.StrEnum):
    """Why a message failed. Equal to its string value ("no-route", ...)."""

    TIMEOUT = "timeout"
    REJECTED = "rejected"
    NO_ROUTE = "no-route"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    OUTCOME_UNKNOWN = "outcome-unknown"
    """No final answer, and an attempt may have reached a receiver (its handler may
    have run): what a timeout, a no-route or an expiry becomes then."""


class GaveUp(enum.StrEnum):
    """Why an event's delivery to one declared subscriber ended without its ack."""

    ATTEMPTS = "attempts"
    """Its own ``max_attempts`` reached it, unanswered."""
    DEADLINE = "deadline"
    """Its own deadline passed."""


class MsgState(enum.Enum):
    """Where a pending message is; a settled message has no state (it is forgotten)."""

    QUEUED = "queued"
    """Waiting for room in its destination's window; never sent."""
    READY = "ready"
    """Given a window slot; the next tick emits its first :class:`Transmit`."""
    IN_FLIGHT = "in-flight"
    """An attempt is out; waiting for its ack or its ack timeout."""
    BACKOFF = "backoff"
    """Waiting to send the next attempt."""
    KEYED = "keyed"
    """Waiting for the message before it of its ordering key to settle; never sent."""


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send attempt ``attempt`` (1-based) of ``msg_id`` now."""

    msg_id: bytes
    attempt: int
    destination: str


@dataclass(slots=True)
class Completion:
    """How one message settled. Truthy only when acked.

    A value the tracker hands out once and never reads back; treat it as read-only.
    (Not frozen: one is built per message, and a frozen dataclass's ``__init__`` sets
    each field through ``object.__setattr__``.)
    """

    msg_id: bytes
    msg_type: str
    destination: str
    status: Status
    reason: Reason | None
    """``None`` when acked."""
    attempts: int
    """How many times it was transmitted (0 if it never left its queue)."""
    first_sent_at: float | None
    completed_at: float
    acked_at: float | None
    acked_by: tuple[Identity, ...]
    """Receivers whose acks completed it: one for a command, one per service for an event,
    none for an event no service subscribes to; for a failed event, the services that
    did ack it."""
    error: RemoteError | None = None
    """The receiver's error, for a rejection."""
    response: bytes | None = None
    missing: tuple[str, ...] = ()
    """For a failed event: the declared subscribers (schema services) no instance of
    which acked it."""
    last_reason: Reason | None = None
    """For an ``outcome-unknown`` failure: what the last answer or timer said
    (``timeout``, ``no-route``, ``expired``)."""
    missing_why: tuple[GaveUp | None, ...] = ()
    """One per :attr:`missing` subscriber: whether its own attempts or its own deadline
    ran out (``None``: neither, e.g. the message was cancelled)."""

    def __bool__(self) -> bool:
        return self.status is Status.ACKED

    @property
    def latency(self) -> float | None:
        """Seconds from the first transmit to the ack."""
        if self.acked_at is None or self.first_sent_at is None:
            return None
        return self.acked_at - self.first_sent_at


TrackerAction = Transmit | Completion
"""What :meth:`OutboundTracker.tick` returns: retransmits, releases and failures."""
