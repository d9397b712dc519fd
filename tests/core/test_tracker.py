"""The outbound tracker: transitions, timing, windows, multi-receiver messages."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from ackbus import Identity, Policy
from ackbus.core import (
    Admit,
    Completion,
    MsgState,
    OutboundTracker,
    Outcome,
    Reason,
    RemoteError,
    Status,
    Transmit,
    backoff_delay,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# No jitter: every time below is exact.
P = Policy(
    ack_timeout=1.0, max_attempts=4, backoff_base=0.5, backoff_cap=2.0, jitter=0.0, deadline=30.0
)
ALICE = Identity("svc", "a")
BOB = Identity("other", "b")
TRANSIENT = RemoteError("ValueError", "try again", permanent=False)
PERMANENT = RemoteError("KeyError", "no such table", permanent=True)


def tracker(window: int = 10) -> OutboundTracker:
    return OutboundTracker(window=window, rng=random.Random(7))


def submit(t: OutboundTracker, msg_id: bytes = b"m", policy: Policy = P, **kw: object) -> Admit:
    args: dict[str, object] = {"msg_type": "T", "destination": "hub", "policy": policy}
    args.update(kw)
    args.setdefault("now", 0.0)
    return t.submit(msg_id, **args)  # type: ignore[arg-type]


# -- the transition table ------------------------------------------------------------------


def _in_flight(t: OutboundTracker) -> None:
    submit(t)


def _backoff(t: OutboundTracker) -> None:
    submit(t)
    assert t.tick(1.0) == []  # attempt 1 timed out: backing off


def _queued(t: OutboundTracker) -> None:
    submit(t, b"first")
    submit(t)  # window of 1 is full


def _ready(t: OutboundTracker) -> None:
    _queued(t)
    t.ack(b"first", outcome=Outcome.OK, now=0.1)


SETUPS: dict[MsgState, Callable[[OutboundTracker], None]] = {
    MsgState.IN_FLIGHT: _in_flight,
    MsgState.BACKOFF: _backoff,
    MsgState.QUEUED: _queued,
    MsgState.READY: _ready,
}


def _ack(outcome: Outcome, **kw: object) -> Callable[[OutboundTracker], object]:
    return lambda t: t.ack(b"m", outcome=outcome, now=0.2, **kw)  # type: ignore[arg-type]


EVENTS: dict[str, Callable[[OutboundTracker], object]] = {
    "ok": _ack(Outcome.OK, receiver=ALICE),
    "duplicate": _ack(Outcome.DUPLICATE, receiver=ALICE),
    "rejected": _ack(Outcome.REJECTED, error=TRANSIENT),
    "rejected-permanent": _ack(Outcome.REJECTED, error=PERMANENT),
    "retry-later": _ack(Outcome.RETRY_LATER, retry_after=0.5),
    "no-route": _ack(Outcome.NO_ROUTE),
    "expired": _ack(Outcome.EXPIRED),
    "in-progress": _ack(Outcome.IN_PROGRESS),
    "cancel": lambda t: t.cancel(b"m", 0.2),
    "tick-now": lambda t: t.tick(0.2),
    "tick-deadline": lambda t: t.tick(30.0),
}

ACKED, FAILED = "acked", "failed"
_ENDS = ("cancel", "tick-deadline")

# (state, event) -> resulting state, or (settled, reason). Missing rows would be a gap: the
# test below checks the table covers every (state, event) pair.
TABLE: dict[tuple[MsgState, str], MsgState | tuple[str, Reason | None]] = {
    (MsgState.IN_FLIGHT, "ok"): (ACKED, None),
    (MsgState.IN_FLIGHT, "duplicate"): (ACKED, None),
    (MsgState.IN_FLIGHT, "rejected"): (FAILED, Reason.REJECTED),
    (MsgState.IN_FLIGHT, "rejected-permanent"): (FAILED, Reason.REJECTED),
    (MsgState.IN_FLIGHT, "retry-later"): MsgState.BACKOFF,
    (MsgState.IN_FLIGHT, "no-route"): MsgState.BACKOFF,
    (MsgState.IN_FLIGHT, "expired"): (FAILED, Reason.EXPIRED),
    (MsgState.IN_FLIGHT, "cancel"): (FAILED, Reason.CANCELLED),
    (MsgState.IN_FLIGHT, "in-progress"): MsgState.IN_FLIGHT,
    (MsgState.IN_FLIGHT, "tick-now"): MsgState.IN_FLIGHT,
    # In flight at the deadline, unanswered: it may have reached a receiver.
    (MsgState.IN_FLIGHT, "tick-deadline"): (FAILED, Reason.OUTCOME_UNKNOWN),
    # A late ack of an earlier attempt still counts while backing off.
    (MsgState.BACKOFF, "ok"): (ACKED, None),
    (MsgState.BACKOFF, "duplicate"): (ACKED, None),
    (MsgState.BACKOFF, "rejected"): (FAILED, Reason.REJECTED),
    (MsgState.BACKOFF, "rejected-permanent"): (FAILED, Reason.REJECTED),
    (MsgState.BACKOFF, "retry-later"): MsgState.BACKOFF,
    (MsgState.BACKOFF, "no-route"): MsgState.BACKOFF,
    # Backing off after attempt 1 timed out: that attempt may have reached a receiver.
    (MsgState.BACKOFF, "expired"): (FAILED, Reason.OUTCOME_UNKNOWN),
    (MsgState.BACKOFF, "in-progress"): MsgState.IN_FLIGHT,
    (MsgState.BACKOFF, "cancel"): (FAILED, Reason.CANCELLED),
    (MsgState.BACKOFF, "tick-now"): MsgState.BACKOFF,
    (MsgState.BACKOFF, "tick-deadline"): (FAILED, Reason.OUTCOME_UNKNOWN),
    # Never sent: acks cannot concern it and are ignored.
    **{(MsgState.QUEUED, e): MsgState.QUEUED for e in EVENTS if e not in _ENDS},
    (MsgState.QUEUED, "cancel"): (FAILED, Reason.CANCELLED),
    (MsgState.QUEUED, "tick-deadline"): (FAILED, Reason.TIMEOUT),
    **{(MsgState.READY, e): MsgState.READY for e in EVENTS if e not in (*_ENDS, "tick-now")},
    (MsgState.READY, "tick-now"): MsgState.IN_FLIGHT,
    (MsgState.READY, "cancel"): (FAILED, Reason.CANCELLED),
    (MsgState.READY, "tick-deadline"): (FAILED, Reason.TIMEOUT),
}  # fmt: skip


def test_table_covers_every_state_and_event() -> None:
    assert set(TABLE) == {(s, e) for s in SETUPS for e in EVENTS}


@pytest.mark.parametrize(("state", "event"), [(s, e) for s in SETUPS for e in EVENTS])
def test_transition(state: MsgState, event: str) -> None:
    t = tracker(window=1)
    SETUPS[state](t)
    assert t.state(b"m") is state
    out = EVENTS[event](t)
    settled = [c for c in (out if isinstance(out, list) else [out]) if isinstance(c, Completion)]
    settled = [c for c in settled if c.msg_id == b"m"]
    expected = TABLE[(state, event)]
    if isinstance(expected, MsgState):
        assert settled == []
        assert t.state(b"m") is expected
    else:
        status, reason = expected
        assert len(settled) == 1
        assert settled[0].status.value == status
        assert settled[0].reason == reason
        assert t.state(b"m") is None
        # Settled means forgotten: a second event about it changes nothing.
        assert t.ack(b"m", outcome=Outcome.OK, now=0.3) is None
        assert t.cancel(b"m", 0.3) is None


# -- timing --------------------------------------------------------------------------------


def run_until_settled(t: OutboundTracker) -> tuple[list[tuple[float, Transmit]], Completion]:
    sent = []
    while (when := t.next_deadline()) is not None:
        for action in t.tick(when):
            if isinstance(action, Transmit):
                sent.append((when, action))
            else:
                return sent, action
    raise AssertionError("nothing settled")


def test_retries_after_ack_timeout_plus_doubling_backoff_then_fail() -> None:
    t = tracker()
    assert submit(t) is Admit.SEND
    sent, done = run_until_settled(t)
    # attempt n+1 at t_n + ack_timeout + min(cap, base * 2**(n-1))
    assert [(w, a.attempt) for w, a in sent] == [(1.5, 2), (3.5, 3), (6.5, 4)]
    assert done.status is Status.FAILED
    # Transmitted and never answered: the handler may have run.
    assert done.reason is Reason.OUTCOME_UNKNOWN
    assert done.last_reason is Reason.TIMEOUT
    assert done.attempts == 4
    assert done.completed_at == 7.5  # the last attempt's ack timeout, not the deadline
    assert not done
    assert done.first_sent_at == 0.0
    assert done.latency is None


def test_deadline_caps_every_timer() -> None:
    t = tracker()
    submit(t, policy=P.with_(deadline=2.0, max_attempts=100))
    sent, done = run_until_settled(t)
    # Attempt 2 would be due at 1.5, but its ack timeout would end after the deadline:
    # cut short, it could only end "outcome unknown". None is sent.
    assert sent == []
    assert done.completed_at == 2.0
    # Transmitted and never answered: the handler may have run.
    assert done.reason is Reason.OUTCOME_UNKNOWN
    assert done.last_reason is Reason.TIMEOUT


def test_no_route_is_retried_within_the_deadline_and_named_at_the_end() -> None:
    t = tracker()
    submit(t, policy=P.with_(deadline=5.0, max_attempts=100))
    assert t.ack(b"m", outcome=Outcome.NO_ROUTE, now=0.1) is None
    assert t.next_deadline() == 0.1 + 0.5  # backoff after attempt 1
    assert t.tick(0.6) == [Transmit(b"m", 2, "hub")]
    # The service appears: the retry is acked.
    done = t.ack(b"m", outcome=Outcome.OK, now=0.7, receiver=ALICE)
    assert done is not None
    assert done.attempts == 2
    assert done.acked_by == (ALICE,)

    # Every attempt answered NO_ROUTE: no attempt reached a receiver.
    submit(t, b"n", policy=P.with_(deadline=5.0, max_attempts=100), now=10.0)
    t.ack(b"n", outcome=Outcome.NO_ROUTE, now=10.1, attempt=1)
    while (when := t.next_deadline()) is not None:
        for action in t.tick(when):
            if isinstance(action, Transmit):
                t.ack(b"n", outcome=Outcome.NO_ROUTE, now=when, attempt=action.attempt)
            else:
                done = action
    assert done.reason is Reason.NO_ROUTE
    assert done.completed_at == 15.0


def test_no_route_on_the_last_attempt_fails_at_once() -> None:
    t = tracker()
    submit(t, policy=P.with_(max_attempts=1))
    done = t.ack(b"m", outcome=Outcome.NO_ROUTE, now=0.1)
    assert done is not None
    assert done.reason is Reason.NO_ROUTE
    assert t.pending_count() == 0


def test_retry_later_honours_the_receivers_delay() -> None:
    t = tracker()
    submit(t)
    t.ack(b"m", outcome=Outcome.RETRY_LATER, retry_after=3.0, now=0.2)
    assert t.next_deadline() == pytest.approx(3.2)
    assert t.tick(3.1) == []
    assert t.tick(3.2) == [Transmit(b"m", 2, "hub")]


def test_transient_rejection_is_retried_only_when_the_policy_says_so() -> None:
    t = tracker()
    submit(t, policy=P.with_(retry_rejected=True))
    assert t.ack(b"m", outcome=Outcome.REJECTED, error=TRANSIENT, now=0.1) is None
    assert t.state(b"m") is MsgState.BACKOFF
    # ...until the attempts run out: then the receiver's error is the reason.
    _, done = run_until_settled(t)
    assert done.reason is Reason.REJECTED
    assert done.error == TRANSIENT

    submit(t, b"p", policy=P.with_(retry_rejected=True))
    done2 = t.ack(b"p", outcome=Outcome.REJECTED, error=PERMANENT, now=0.1)
    assert done2 is not None
    assert done2.reason is Reason.REJECTED
    assert done2.error == PERMANENT


def test_completion_carries_the_ack() -> None:
    t = tracker()
    submit(t, now=1.0)
    t.tick(2.0)
    t.tick(2.5)  # attempt 2 at 2.5
    done = t.ack(b"m", outcome=Outcome.OK, now=2.75, receiver=ALICE, response=b"resp")
    assert done is not None
    assert done
    assert (done.msg_type, done.destination, done.attempts) == ("T", "hub", 2)
    assert (done.first_sent_at, done.acked_at, done.latency) == (1.0, 2.75, 1.75)
    assert done.acked_by == (ALICE,)
    assert done.response == b"resp"
    assert done.error is None


def test_unknown_and_duplicate_ids() -> None:
    t = tracker()
    assert t.ack(b"nope", outcome=Outcome.OK, now=0.0) is None
    assert t.routed(b"nope", ["svc"], 0.0) is None
    assert t.cancel(b"nope", 0.0) is None
    submit(t)
    with pytest.raises(ValueError, match="already pending"):
        submit(t)
    assert t.ack(b"m", outcome=Outcome.UNSPECIFIED, now=0.1) is None
    assert t.state(b"m") is MsgState.IN_FLIGHT


# -- the window ----------------------------------------------------------------------------


def test_full_window_queues_in_order_and_never_drops() -> None:
    t = tracker(window=2)
    admits = [submit(t, bytes([i])) for i in range(5)]
    assert admits == [Admit.SEND] * 2 + [Admit.QUEUED] * 3
    assert (t.in_flight("hub"), t.queued("hub"), t.pending_count()) == (2, 3, 5)
    assert t.attempts(b"\x02") == 0
    # Another destination has its own window.
    assert submit(t, b"x", destination="elsewhere") is Admit.SEND

    t.ack(b"\x00", outcome=Outcome.OK, now=0.1)
    assert t.next_deadline() == 0.1  # in the past once time moves on: tick at once
    assert t.tick(0.15) == [Transmit(b"\x02", 1, "hub")]
    # A failure frees a slot as well as an ack does.
    t.cancel(b"\x01", 0.2)
    assert t.tick(0.2) == [Transmit(b"\x03", 1, "hub")]
    assert (t.in_flight("hub"), t.queued("hub")) == (2, 1)
    # A queued message that is cancelled frees no slot and leaves the queue.
    t.cancel(b"\x04", 0.3)
    assert (t.in_flight("hub"), t.queued("hub")) == (2, 0)
    # The deadline counts from submit, also while queued.
    done = t.ack(b"\x02", outcome=Outcome.OK, now=0.4)
    assert done is not None
    assert done.first_sent_at == 0.15


def test_queued_message_fails_at_its_deadline_unsent() -> None:
    t = tracker(window=1)
    submit(t, b"a", policy=P.with_(deadline=100.0))
    submit(t, b"b", policy=P.with_(deadline=1.0))
    done = [a for a in t.tick(1.0) if isinstance(a, Completion)]
    assert [(c.msg_id, c.reason, c.attempts, c.first_sent_at) for c in done] == [
        (b"b", Reason.TIMEOUT, 0, None)
    ]
    assert (t.in_flight("hub"), t.queued("hub")) == (1, 0)


def test_timer_heap_stays_bounded_under_a_stream_of_acked_messages() -> None:
    t = tracker(window=100_000)
    for i in range(20_000):
        msg_id = i.to_bytes(4, "big")
        submit(t, msg_id, now=i * 1e-4)
        t.ack(msg_id, outcome=Outcome.OK, now=i * 1e-4)
    assert t.pending_count() == 0
    assert t.timer_count() <= 64
    assert t.next_deadline() is None


def test_queued_deadlines_keep_later_ack_timeouts_out_of_the_heap() -> None:
    """A queued message's timer is its deadline, far behind every ack timeout: it has a
    FIFO of its own, so the ack timeouts armed after it still go to theirs (in one FIFO
    they went to the heap, each one, until that deadline passed), and its entry, dead
    once the message is sent, leaves from the front (messages leave the queue in order)."""
    t = tracker(window=2)
    for i in range(4):  # two in flight, two queued
        submit(t, bytes([i]), policy=P.with_(deadline=100.0), now=0.0)
    assert t.queued("hub") == 2
    for i in range(4, 250):
        now = i * 1e-3
        t.ack(bytes([i - 4]), outcome=Outcome.OK, now=now)  # frees a slot: one goes
        t.tick(now)
        submit(t, bytes([i]), policy=P.with_(deadline=100.0), now=now)  # and one queues
        t.next_deadline()  # as the endpoint asks after each batch
    assert t._heap == []
    assert t.timer_count() <= 2 * t.pending_count() + 2
    assert (t.in_flight("hub"), t.queued("hub")) == (2, 2)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.01, 2.0), st.floats(0.0, 0.5), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 40),
    st.integers(0, 1000),
)
def test_timers_fire_in_time_order_whatever_order_they_were_armed_in(
    sends: list[tuple[float, float, bool]], window: int, seed: int
) -> None:
    """Timers armed in time order go to a FIFO, the others (a shorter ack timeout after
    a longer one, backoffs, deadlines of queued messages) to a heap; together they must
    behave as one heap: the next deadline is always the earliest live timer, and a tick
    leaves nothing due behind."""
    t = OutboundTracker(window=window, rng=random.Random(seed))
    now = 0.0
    for i, (timeout, dt, ack) in enumerate(sends):
        now += dt
        msg_id = i.to_bytes(2, "big")
        policy = P.with_(ack_timeout=timeout, deadline=5.0, max_attempts=3, jitter=0.3)
        submit(t, msg_id, policy=policy, now=now)
        if ack:
            t.ack(msg_id, outcome=Outcome.OK, now=now)
    while (when := t.next_deadline()) is not None:
        timers = [p for p in t._pending.values() if p.timer]
        live = [p.when for p in timers]
        assert when <= min(live)  # a window slot freed may make it now, never later
        assert t._ready or when == min(live)
        now = max(now, when)
        due = {p.msg_id: (p.when, p.timer) for p in timers if p.when <= now}
        fired = [due[a.msg_id] for a in t.tick(now) if a.msg_id in due]
        assert fired == sorted(fired)  # in (instant, arming order), as from one heap
        after = t.next_deadline()
        assert after is None or after > now
    assert t.pending_count() == 0
    assert t.timer_count() <= 64


# -- several receivers ---------------------------------------------------------------------


def test_event_completes_when_every_routed_service_acked() -> None:
    t = tracker()
    submit(t, expect=None)
    assert t.ack(b"m", outcome=Outcome.OK, now=0.1, receiver=ALICE, response=b"") is None
    # The routed notice may come after some acks (reordered).
    assert t.routed(b"m", ["svc", "other"], 0.2) is None
    assert t.ack(b"m", outcome=Outcome.DUPLICATE, now=0.3, receiver=ALICE) is None
    done = t.ack(b"m", outcome=Outcome.OK, now=0.4, receiver=BOB)
    assert done is not None
    assert done.acked_by == (ALICE, BOB)
    assert done.acked_at == 0.4


DECLARED = P.with_(subscribers=("poker.Audit", "poker.Lobby"))
"""An event whose schema declares two subscriber services."""


def test_an_event_routed_to_nobody_waits_for_its_declared_subscribers() -> None:
    t = tracker()
    submit(t, policy=DECLARED, expect=None)
    assert t.routed(b"m", [], 0.1) is None  # a hub that just restarted knows no one yet
    t.tick(1.0)  # the ack timeout: back off, then send again
    (retry,) = [a for a in t.tick(1.5) if isinstance(a, Transmit)]
    assert retry.attempt == 2
    assert t.routed(b"m", ["audit", "lobby"], 1.6, [["poker.Audit"], ["poker.Lobby"]]) is None
    assert t.ack(b"m", outcome=Outcome.OK, now=1.7, receiver=Identity("audit", "1")) is None
    done = t.ack(b"m", outcome=Outcome.OK, now=1.8, receiver=Identity("lobby", "1"))
    assert done is not None
    assert done.status is Status.ACKED
    assert [i.service for i in done.acked_by] == ["audit", "lobby"]


def test_a_declared_subscriber_matches_by_the_schema_service_its_endpoint_runs() -> None:
    t = tracker()
    submit(t, policy=DECLARED, expect=None)
    # One endpoint ("both") runs both schema services: its ack covers both.
    t.routed(b"m", ["both"], 0.1, [["poker.Audit", "poker.Lobby"]])
    done = t.ack(b"m", outcome=Outcome.OK, now=0.2, receiver=Identity("both", "1"))
    assert done is not None


def test_an_ack_before_its_routed_notice_counts_once_the_notice_comes() -> None:
    t = tracker()
    submit(t, policy=DECLARED, expect=None)
    assert t.ack(b"m", outcome=Outcome.OK, now=0.1, receiver=Identity("audit", "1")) is None
    assert t.ack(b"m", outcome=Outcome.OK, now=0.1, receiver=Identity("lobby", "1")) is None
    done = t.routed(b"m", ["audit", "lobby"], 0.2, [["poker.Audit"], ["poker.Lobby"]])
    assert done is not None


def test_run_time_subscribers_routed_to_must_ack_too() -> None:
    t = tracker()
    submit(t, policy=P.with_(subscribers=("poker.Audit",)), expect=None)
    t.routed(b"m", ["audit", "spy"], 0.1, [["poker.Audit"], []])
    assert t.ack(b"m", outcome=Outcome.OK, now=0.2, receiver=Identity("audit", "1")) is None
    assert t.ack(b"m", outcome=Outcome.OK, now=0.3, receiver=Identity("spy", "1")) is not None


def test_an_event_fails_naming_the_declared_subscribers_that_never_acked() -> None:
    t = tracker()
    submit(t, policy=DECLARED.with_(deadline=5.0), expect=None)
    t.routed(b"m", ["audit"], 0.1, [["poker.Audit"]])
    t.ack(b"m", outcome=Outcome.OK, now=0.2, receiver=Identity("audit", "1"))
    failed = [a for now in (1.0, 2.0, 3.0, 4.0, 5.0) for a in t.tick(now)]
    (done,) = [a for a in failed if isinstance(a, Completion)]
    assert done.status is Status.FAILED
    assert done.missing == ("poker.Lobby",)


def test_event_no_one_subscribes_to_is_acked_by_nobody() -> None:
    t = tracker()
    submit(t, expect=None)
    done = t.routed(b"m", [], 0.1)
    assert done is not None
    assert done.status is Status.ACKED
    assert done.acked_by == ()


def test_event_retry_may_reach_a_smaller_set() -> None:
    t = tracker()
    submit(t, expect=None)
    t.routed(b"m", ["svc", "other"], 0.1)
    t.ack(b"m", outcome=Outcome.OK, now=0.2, receiver=ALICE)
    t.tick(2.0)  # "other" never answered: retry
    done = t.routed(b"m", ["svc"], 2.1)  # it left meanwhile
    assert done is not None
    assert done.acked_by == (ALICE,)


def test_expect_counts_distinct_services() -> None:
    t = tracker()
    submit(t, expect=2)
    assert t.ack(b"m", outcome=Outcome.OK, now=0.1, receiver=ALICE) is None
    assert t.ack(b"m", outcome=Outcome.OK, now=0.1, receiver=Identity("svc", "z")) is None
    assert t.ack(b"m", outcome=Outcome.OK, now=0.2, receiver=BOB) is not None


# -- properties ----------------------------------------------------------------------------

policies = st.builds(
    Policy,
    ack_timeout=st.floats(0.001, 10.0),
    max_attempts=st.integers(1, 50),
    backoff_base=st.floats(0.0, 1.0),
    backoff_cap=st.floats(1.0, 60.0),
    jitter=st.floats(0.0, 1.0),
    deadline=st.floats(0.01, 100.0),
)


@given(policies, st.integers(1, 10_000), st.integers(0, 2**32))
def test_backoff_stays_within_its_bounds(policy: Policy, attempt: int, seed: int) -> None:
    nominal = min(policy.backoff_cap, policy.backoff_base * 2.0 ** min(attempt - 1, 64))
    delay = backoff_delay(policy, attempt, random.Random(seed))
    assert nominal * (1 - policy.jitter) - 1e-9 <= delay <= nominal * (1 + policy.jitter) + 1e-9
    assert 0.0 <= delay <= policy.backoff_cap * 2


@given(policies, st.integers(1, 60))
def test_nominal_backoff_never_shrinks(policy: Policy, attempt: int) -> None:
    still = policy.with_(jitter=0.0)
    rng = random.Random(0)
    assert backoff_delay(still, attempt, rng) <= backoff_delay(still, attempt + 1, rng)


@dataclass
class Op:
    kind: str
    msg: int
    dt: float
    outcome: Outcome


ops = st.lists(
    st.builds(
        Op,
        kind=st.sampled_from(["submit", "submit", "ack", "routed", "cancel", "tick"]),
        msg=st.integers(0, 7),
        dt=st.floats(0.0, 3.0),
        outcome=st.sampled_from(list(Outcome)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(ops, st.integers(1, 3), st.integers(0, 1000))
def test_any_event_sequence_settles_every_message_exactly_once(
    script: list[Op], window: int, seed: int
) -> None:
    t = OutboundTracker(window=window, rng=random.Random(seed))
    policy = P.with_(jitter=0.3, retry_rejected=True, deadline=20.0, max_attempts=6)
    now = 0.0
    submitted: set[bytes] = set()
    settled: list[bytes] = []

    def record(done: object) -> None:
        if isinstance(done, Completion):
            settled.append(done.msg_id)
            assert done.reason is None if done else done.reason is not None

    for op in script:
        now += op.dt
        msg_id = bytes([op.msg])
        if op.kind == "submit":
            if t.state(msg_id) is None and msg_id not in submitted:
                submitted.add(msg_id)
                submit(t, msg_id, policy=policy, now=now, expect=None if op.msg % 2 else 1)
        elif op.kind == "ack":
            record(t.ack(msg_id, outcome=op.outcome, now=now, receiver=ALICE, retry_after=0.1))
        elif op.kind == "routed":
            record(t.routed(msg_id, ["svc"], now))
        elif op.kind == "cancel":
            record(t.cancel(msg_id, now))
        else:
            for action in t.tick(now):
                record(action)
        assert t.in_flight("hub") <= window
    # Time runs on: everything settles by its deadline, and nothing is left behind.
    while (when := t.next_deadline()) is not None:
        now = max(now, when)
        for action in t.tick(now):
            record(action)
    assert sorted(settled) == sorted(submitted)
    assert (t.pending_count(), t.in_flight("hub"), t.queued("hub")) == (0, 0, 0)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 30),
    window=st.integers(1, 8),
    kinds=st.lists(st.booleans(), min_size=30, max_size=30),
    acked=st.lists(st.integers(0, 40), max_size=60),
    ticks=st.integers(0, 3),
)
def test_ack_ok_settles_exactly_as_one_ok_ack_per_id(
    n: int, window: int, kinds: list[bool], acked: list[int], ticks: int
) -> None:
    """The batch call a sender uses for compact ACK groups agrees with :meth:`ack`:
    same completions in the same order, same state after, for commands and events,
    queued, retried, unknown and repeated ids alike."""
    who = Identity("table", "t-1")
    one, many = tracker(window), tracker(window)
    now = 0.0
    for t in (one, many):
        for i in range(n):
            expect = 1 if kinds[i] else None  # an event waits for every routed service
            t.submit(
                bytes([i]) * 16, msg_type="T", destination="d", policy=P, now=0.0, expect=expect
            )
            if expect is None:
                t.routed(bytes([i]) * 16, ["table"], 0.0)
    for _ in range(ticks):  # some ack timeouts pass: retries, queued ones released
        now += P.ack_timeout
        assert one.tick(now) == many.tick(now)
    ids = [bytes([i]) * 16 for i in acked]
    singly = [c for mid in ids if (c := one.ack(mid, outcome=Outcome.OK, now=now, receiver=who))]
    assert many.ack_ok(ids, now, who) == singly
    assert one.pending_count() == many.pending_count()
    assert [one.state(bytes([i]) * 16) for i in range(n)] == [
        many.state(bytes([i]) * 16) for i in range(n)
    ]
    assert one.in_flight("d") == many.in_flight("d")
    assert one._in_flight == many._in_flight  # no count left behind at zero
    assert one.tick(now + 100) == many.tick(now + 100)


def test_attempts_not_routed_to_a_missing_subscriber_do_not_spend_the_budget() -> None:
    t = tracker()
    two = DECLARED.with_(max_attempts=2, deadline=20.0)
    submit(t, policy=two, expect=None)
    t.routed(b"m", ["lobby"], 0.1, [["poker.Lobby"]])
    t.ack(b"m", outcome=Outcome.OK, now=0.2, receiver=Identity("lobby", "1"))
    now, sent = 0.0, 1
    while now < 10.0:  # audit is down: the hub routes every retry to lobby alone
        now += 0.5
        for action in t.tick(now):
            assert isinstance(action, Transmit), action  # no failure at 2 attempts
            sent = action.attempt
            t.routed(b"m", ["lobby"], now, [["poker.Lobby"]])
    assert sent > 2
    t.routed(b"m", ["audit", "lobby"], now, [["poker.Audit"], ["poker.Lobby"]])
    done = t.ack(b"m", outcome=Outcome.OK, now=now, receiver=Identity("audit", "1"))
    assert done is not None
    assert done.status is Status.ACKED


def test_attempts_that_reached_every_subscriber_spend_the_budget() -> None:
    t = tracker()
    submit(t, policy=DECLARED.with_(max_attempts=2, deadline=20.0), expect=None)
    t.routed(b"m", ["audit", "lobby"], 0.1, [["poker.Audit"], ["poker.Lobby"]])
    failed = [a for now in (1.0, 1.5, 2.5, 3.0, 4.0) for a in t.tick(now)]
    (done,) = [a for a in failed if isinstance(a, Completion)]
    assert done.status is Status.FAILED
    assert done.missing == ("poker.Audit", "poker.Lobby")


# -- outcome unknown: a failed report never hides a run --------------------------------------


def test_one_unanswered_attempt_among_no_routes_makes_the_outcome_unknown() -> None:
    t = tracker()
    submit(t, policy=P.with_(deadline=5.0, max_attempts=3))
    assert t.ack(b"m", outcome=Outcome.NO_ROUTE, now=0.1, attempt=1) is None
    assert t.tick(0.6) == [Transmit(b"m", 2, "hub")]
    t.tick(1.6)  # attempt 2 timed out, unanswered: it may have reached a receiver
    assert t.tick(t.next_deadline() or 0.0) == [Transmit(b"m", 3, "hub")]
    done = t.ack(b"m", outcome=Outcome.NO_ROUTE, now=2.3, attempt=3)
    assert done is not None
    assert done.reason is Reason.OUTCOME_UNKNOWN
    assert done.last_reason is Reason.NO_ROUTE


def test_a_late_no_route_for_a_timed_out_attempt_says_it_reached_nobody() -> None:
    t = tracker()
    submit(t, policy=P.with_(deadline=5.0, max_attempts=2))
    t.tick(1.0)  # attempt 1 timed out
    assert t.tick(1.5) == [Transmit(b"m", 2, "hub")]
    # The hub's answer to attempt 1 arrives late: it changes nothing for attempt 2 ...
    assert t.ack(b"m", outcome=Outcome.NO_ROUTE, now=1.6, attempt=1) is None
    assert t.state(b"m") is MsgState.IN_FLIGHT
    # ... and attempt 2 is refused too: no attempt reached a receiver.
    done = t.ack(b"m", outcome=Outcome.NO_ROUTE, now=1.7, attempt=2)
    assert done is not None
    assert done.reason is Reason.NO_ROUTE


def test_a_stale_no_route_does_not_answer_the_attempt_in_flight() -> None:
    t = tracker()
    submit(t, policy=P.with_(deadline=5.0, max_attempts=2))
    assert t.ack(b"m", outcome=Outcome.NO_ROUTE, now=0.1, attempt=1) is None
    assert t.tick(0.6) == [Transmit(b"m", 2, "hub")]
    # A duplicate of attempt 1's answer: attempt 2 is still out, unanswered.
    assert t.ack(b"m", outcome=Outcome.NO_ROUTE, now=0.7, attempt=1) is None
    _, done = run_until_settled(t)
    assert done.reason is Reason.OUTCOME_UNKNOWN
    assert done.attempts == 2


def test_an_expiry_after_an_unanswered_attempt_is_outcome_unknown() -> None:
    t = tracker()
    submit(t, policy=P.with_(deadline=5.0))
    t.tick(1.0)
    assert t.tick(1.5) == [Transmit(b"m", 2, "hub")]
    done = t.ack(b"m", outcome=Outcome.EXPIRED, now=1.6, attempt=2)
    assert done is not None
    assert (done.reason, done.last_reason) == (Reason.OUTCOME_UNKNOWN, Reason.EXPIRED)


def test_a_message_that_never_left_its_queue_times_out_plainly() -> None:
    t = tracker(window=1)
    submit(t, b"first")
    submit(t, policy=P.with_(deadline=2.0))
    done = [c for c in t.tick(2.0) if isinstance(c, Completion) and c.msg_id == b"m"]
    assert [(c.reason, c.attempts) for c in done] == [(Reason.TIMEOUT, 0)]


# -- in progress: long handlers hold their lease ---------------------------------------------


def test_in_progress_rearms_the_ack_timeout_without_spending_an_attempt() -> None:
    t = tracker()
    policy = P.with_(ack_timeout=1.0, max_attempts=2, deadline=30.0)
    submit(t, policy=policy)
    for k in range(1, 8):  # a handler running 7 s, its receiver saying so every 0.8 s
        assert t.ack(b"m", outcome=Outcome.IN_PROGRESS, now=0.8 * k) is None
        assert t.tick(0.8 * k) == []
        assert t.next_deadline() == pytest.approx(0.8 * k + 1.0)
    done = t.ack(b"m", outcome=Outcome.OK, now=7.0, receiver=ALICE)
    assert done is not None
    assert done.attempts == 1


def test_a_retry_answered_in_progress_is_not_spent() -> None:
    t = tracker()
    submit(t, policy=P.with_(ack_timeout=1.0, max_attempts=2, deadline=30.0))
    now = 0.0
    for attempt in range(2, 12):  # every retry reaches the running handler
        when = t.next_deadline()
        assert when is not None
        out = t.tick(when)
        if not out:
            when = t.next_deadline()
            assert when is not None
            out = t.tick(when)
        assert out == [Transmit(b"m", attempt, "hub")]
        now = when + 0.01
        assert t.ack(b"m", outcome=Outcome.IN_PROGRESS, now=now) is None
    done = t.ack(b"m", outcome=Outcome.OK, now=now + 0.5, receiver=ALICE)
    assert done is not None
    assert done.attempts == 11


def test_a_receiver_that_dies_mid_handler_gets_the_policys_retries_then_outcome_unknown() -> None:
    t = tracker()
    submit(t, policy=P.with_(ack_timeout=1.0, max_attempts=2, deadline=30.0))
    t.ack(b"m", outcome=Outcome.IN_PROGRESS, now=0.5)
    # The receiver dies: no more notices. The lease lapses at 1.5; two attempts follow.
    sent, done = run_until_settled(t)
    assert [a.attempt for _, a in sent] == [2, 3]
    assert done.reason is Reason.OUTCOME_UNKNOWN
    assert done.completed_at < 30.0


def test_a_handler_outliving_the_deadline_is_outcome_unknown_at_the_deadline() -> None:
    t = tracker()
    submit(t, policy=P.with_(ack_timeout=1.0, max_attempts=2, deadline=5.0))
    now = 0.0
    while now < 5.0:
        now += 0.5
        t.ack(b"m", outcome=Outcome.IN_PROGRESS, now=now)
        out = t.tick(now)
        assert not [a for a in out if isinstance(a, Transmit)]
        if out:
            break
    (done,) = out
    assert isinstance(done, Completion)
    assert (done.reason, done.attempts, done.completed_at) == (Reason.OUTCOME_UNKNOWN, 1, 5.0)


def test_in_progress_from_one_subscriber_keeps_an_events_retries_on_schedule() -> None:
    t = tracker()
    submit(t, policy=P.with_(ack_timeout=1.0, max_attempts=2), expect=None)
    t.routed(b"m", ["a", "b"], 0.05)
    t.ack(b"m", outcome=Outcome.IN_PROGRESS, now=0.5)
    assert t.next_deadline() == 1.0  # not re-armed: b may have missed it
    t.tick(1.0)
    assert t.tick(1.5) == [Transmit(b"m", 2, "hub")]


def test_no_retry_goes_out_that_the_deadline_would_cut_short() -> None:
    # Every attempt answered NO_ROUTE at once, with retries every few ms: at the deadline
    # no attempt is in flight, so the failure is NoRoute, whatever the timing.
    t = tracker()
    policy = P.with_(
        ack_timeout=0.2, backoff_base=0.003, backoff_cap=0.003, deadline=0.5, max_attempts=10**6
    )
    submit(t, policy=policy)
    t.ack(b"m", outcome=Outcome.NO_ROUTE, now=0.001, attempt=1)
    last = 0.0
    while (when := t.next_deadline()) is not None:
        for action in t.tick(when):
            if isinstance(action, Transmit):
                last = when
                t.ack(b"m", outcome=Outcome.NO_ROUTE, now=when + 0.001, attempt=action.attempt)
            else:
                done = action
    assert last <= 0.5 - 0.2
    assert (done.reason, done.completed_at) == (Reason.NO_ROUTE, 0.5)
    assert done.attempts > 50


def test_held_at_the_hub_waits_the_longer_lease_spends_no_attempt_and_hides_no_run() -> None:
    t = tracker()
    submit(t, policy=P.with_(ack_timeout=0.2, max_attempts=1, deadline=30.0))
    for k in range(1, 20):  # held for 19 s, the hub saying so every second (lease 3 s)
        assert t.ack(b"m", outcome=Outcome.HELD, now=float(k), retry_after=3.0) is None
        assert t.tick(float(k) + 0.5) == []
        assert t.next_deadline() == pytest.approx(k + 3.0)
    # The hub dies with it: the lease lapses, the one allowed attempt is spent anew.
    sent, done = run_until_settled(t)
    assert [a.attempt for _, a in sent] == [2]
    # The attempts timed out unanswered: the hub may have passed one on before it died.
    assert done.reason is Reason.OUTCOME_UNKNOWN


def test_held_then_no_route_everywhere_is_no_route() -> None:
    """A HELD notice is not "a handler started": answered no-route for every attempt,
    the message fails NoRoute."""
    t = tracker()
    submit(t, policy=P.with_(ack_timeout=1.0, max_attempts=2, deadline=30.0))
    t.ack(b"m", outcome=Outcome.HELD, now=0.1, retry_after=3.0)
    done = t.ack(b"m", outcome=Outcome.NO_ROUTE, now=0.2, attempt=1)
    while done is None:
        when = t.next_deadline()
        assert when is not None
        (action,) = t.tick(when)
        assert isinstance(action, Transmit)
        done = t.ack(b"m", outcome=Outcome.NO_ROUTE, now=when, attempt=action.attempt)
    assert done.reason is Reason.NO_ROUTE


def test_a_deferred_retry_later_from_the_hub_spends_no_attempt() -> None:
    t = tracker()
    submit(t, policy=P.with_(ack_timeout=1.0, max_attempts=2, deadline=30.0))
    for attempt in range(1, 6):  # a hub in its grace period, five times over
        now = t.next_deadline() or 0.0
        c = t.ack(
            b"m",
            outcome=Outcome.RETRY_LATER,
            now=now,
            retry_after=0.1,
            attempt=attempt,
            deferred=True,
        )
        assert c is None
        when = t.next_deadline()
        assert when is not None
        assert t.tick(when) == [Transmit(b"m", attempt + 1, "hub")]
    done = t.ack(b"m", outcome=Outcome.OK, now=2.0, receiver=ALICE)
    assert done is not None
    assert done.attempts == 6
    # Not deferred (a handler's RetryLater): it spends its attempt.
    t2 = tracker()
    submit(t2, policy=P.with_(ack_timeout=1.0, max_attempts=2, deadline=30.0))
    assert t2.ack(b"m", outcome=Outcome.RETRY_LATER, now=0.0, retry_after=0.1, attempt=1) is None
    t2.tick(0.2)
    failed = t2.ack(b"m", outcome=Outcome.RETRY_LATER, now=0.3, retry_after=0.1, attempt=2)
    assert failed is not None
    assert not failed
