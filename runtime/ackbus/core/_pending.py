"""The tracker's bookkeeping of one unsettled message (private to ``core.tracker``:
never handed out; what the tracker hands out is in ``core.settled``)."""

from __future__ import annotations

from ._common import RemoteError
from ._values import Identity, Policy
from .settled import GaveUp, MsgState, Reason

__all__ = [
    "Fan",
    "Pending",
    "fan_out",
    "give_up",
    "grouped",
    "missing",
    "reasons",
    "settle",
    "waiting",
]


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
        "fan",
        "first_sent_at",
        "free",
        "key",
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
        self.key = 0
        """Its ordering key's hash (0: none)."""
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
        self.fan: Fan | None = None
        """For an event with declared subscribers: when each one's delivery ends."""


class Fan:
    """The per-subscriber limits of one event with declared subscribers."""

    __slots__ = ("ends", "gave_up", "own_end")

    def __init__(self, ends: dict[str, float], own_end: float) -> None:
        self.ends = ends
        """Declared subscriber -> the instant its own deadline passes."""
        self.own_end = own_end
        """When the event's own deadline passes (for run-time subscribers)."""
        self.gave_up: dict[str, GaveUp] = {}
        """Declared subscribers no longer waited for, and why."""


def fan_out(p: Pending, now: float) -> float:
    """Set up event ``p``'s per-subscriber limits; the instant its last one ends."""
    policy = p.policy
    ends = {s: now + policy.limits(s)[1] for s in policy.subscribers}
    p.fan = Fan(ends, now + policy.deadline)
    return max(now + policy.life, *ends.values())


def waiting(p: Pending) -> list[str]:
    """The declared subscribers of event ``p`` still waited for: not acked, not given up."""
    fan = p.fan
    gave_up = fan.gave_up if fan is not None else {}
    return [s for s in missing(p) if s not in gave_up]


def give_up(p: Pending, now: float, timed_out: bool) -> None:
    """Stop waiting for the declared subscribers whose own deadline passed, and, after an
    attempt's ack timeout (``timed_out``), for those whose own attempts are spent: an
    attempt the hub routed to none of a subscriber's instances does not spend them."""
    fan = p.fan
    if fan is None:
        return
    reached = _reached(p)
    spent = p.attempts - p.free
    for s in waiting(p):
        if now >= fan.ends[s]:
            fan.gave_up[s] = GaveUp.DEADLINE
        elif timed_out and s in reached and spent >= p.policy.limits(s)[0]:
            fan.gave_up[s] = GaveUp.ATTEMPTS


def grouped(p: Pending) -> bool | None:
    """``True`` once multi-receiver message ``p`` (no declared subscribers) has its acks:
    from every service the latest notice named (an event), or from ``expect`` services."""
    acked = p.acked_services
    if p.expect is None:
        if p.services is None:
            return None
        if acked is None:
            return None if p.services else True
        return True if p.services <= acked else None
    return True if acked is not None and len(acked) >= p.expect else None


def settle(p: Pending, now: float, timed_out: bool) -> float | bool:
    """Where event ``p`` with declared subscribers stands after an ack, a notice or (with
    ``timed_out``) an attempt's ack timeout: ``True`` acked, ``False`` failed, else the
    instant it waits until at most (the latest deadline among the subscribers still
    waited for). Done once no declared subscriber is waited for (each acked, or its own
    attempts or deadline ran out: failed if any did not ack) and the run-time
    subscribers routed to acked (or the event's own attempts or deadline ran out)."""
    fan = p.fan
    assert fan is not None
    give_up(p, now, timed_out)
    covers = p.covers or {}
    acked = p.acked_services or ()
    runtime = p.services is not None and any(
        not covers.get(s) and s not in acked for s in p.services
    )
    wait = waiting(p)
    if wait:
        end = max(fan.ends[s] for s in wait)
        return max(end, fan.own_end) if runtime else end
    if missing(p):
        return False
    if runtime:
        spent = timed_out and p.attempts - p.free >= p.policy.max_attempts
        return fan.own_end if now < fan.own_end and not spent else False
    return True


def reasons(p: Pending, names: tuple[str, ...], now: float) -> tuple[GaveUp | None, ...]:
    """Why the delivery to each of ``names`` (missing subscribers) ended."""
    fan = p.fan
    if fan is None:
        return tuple(None for _ in names)
    out: list[GaveUp | None] = []
    for s in names:
        why = fan.gave_up.get(s)
        if why is None and now >= fan.ends[s]:
            why = GaveUp.DEADLINE
        out.append(why)
    return tuple(out)


def _reached(p: Pending) -> set[str]:
    covers = p.covers or {}
    reached: set[str] = set()
    for service in p.services or ():
        reached |= covers.get(service, frozenset())
    return reached


def missing(p: Pending) -> tuple[str, ...]:
    """The declared subscribers of event ``p`` that no service acked for yet."""
    got: set[str] = set()
    covers = p.covers or {}
    for service in p.acked_services or ():
        got |= covers.get(service, frozenset())
    return tuple(s for s in p.policy.subscribers if s not in got)
