"""The tracker's bookkeeping of one unsettled message (private to ``core.tracker``:
never handed out; what the tracker hands out is in ``core.settled``)."""

from __future__ import annotations

from ._common import RemoteError
from ._values import Identity, Policy
from .settled import MsgState, Reason

__all__ = ["Pending", "missing", "unreached"]


class Pending:
    """Mutable bookkeeping of one unsettled message (private: never handed out)."""

    __slots__ = (
        "acked_by",
        "acked_services",
        "attempts",
        "covers",
        "deadline",
        "destination",
        "done",
        "expect",
        "first_sent_at",
        "free",
        "last_error",
        "last_reason",
        "msg_id",
        "msg_type",
        "policy",
        "response",
        "services",
        "state",
        "timer",
        "unknown",
        "when",
    )

    def __init__(
        self,
        msg_id: bytes,
        msg_type: str,
        destination: str,
        policy: Policy,
        deadline: float,
        expect: int | None,
    ) -> None:
        self.msg_id = msg_id
        self.msg_type = msg_type
        self.destination = destination
        self.policy = policy
        self.deadline = deadline
        self.expect = expect
        self.state = MsgState.QUEUED
        self.attempts = 0
        self.first_sent_at: float | None = None
        self.timer = 0
        """Token of the live heap entry; 0 when none is armed."""
        self.when = 0.0
        self.done = False
        self.last_reason: Reason | None = None
        self.last_error: RemoteError | None = None
        self.response: bytes | None = None
        self.services: frozenset[str] | None = None
        self.acked_services: set[str] | None = None
        self.acked_by: list[Identity] | None = None
        self.unknown = 0
        """Bit *n* set: attempt *n* may have reached a receiver (it timed out, or was in
        flight when the message failed, with no answer saying it was not taken); bit 0
        set: a handler is known to have started (IN_PROGRESS, a transient rejection)."""
        self.free = 0
        """Attempts that do not count against ``max_attempts``: those sent up to the
        latest IN_PROGRESS notice (the message was being handled)."""
        self.covers: dict[str, frozenset[str]] | None = None
        """For an event with declared subscribers: the schema services each routed
        service implements, from the hub's ROUTED notices."""


def missing(p: Pending) -> tuple[str, ...]:
    """The declared subscribers of event ``p`` that no service acked for yet."""
    got: set[str] = set()
    covers = p.covers or {}
    for service in p.acked_services or ():
        got |= covers.get(service, frozenset())
    return tuple(s for s in p.policy.subscribers if s not in got)


def unreached(p: Pending) -> bool:
    """Whether event ``p`` waits for a declared subscriber the hub did not route its
    latest attempt to (none registered): such attempts do not spend the budget, so a
    subscriber that is down waits until the deadline, not until the attempts run out."""
    if not p.policy.subscribers:
        return False
    covers = p.covers or {}
    reached: set[str] = set()
    for service in p.services or ():
        reached |= covers.get(service, frozenset())
    return any(s not in reached for s in missing(p))
