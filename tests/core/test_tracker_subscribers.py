"""Per-subscriber limits of an event: each declared subscriber's own attempts and
deadline govern its delivery; the report fails only once none is waited for."""

from __future__ import annotations

import random

import pytest
from ackbus import Identity, Policy, SchemaError, SubscriberPolicy
from ackbus.core import Completion, Kind, OutboundTracker, Outcome, Status, Transmit
from ackbus.core._values import capped, shortened
from ackbus.core.endpoint_io import delivery_error
from ackbus.core.settled import GaveUp, Reason
from ackbus.errors import AckTimeout

AUDIT, LOBBY = "poker.Audit", "poker.Lobby"
# No jitter; the event's own limits: 3 attempts, 5 s. Audit's: 100 attempts, 50 s.
EVENT = Policy(
    ack_timeout=1.0,
    max_attempts=3,
    backoff_base=0.5,
    backoff_cap=0.5,
    jitter=0.0,
    deadline=5.0,
    kind=Kind.EVENT,
    subscribers=(AUDIT, LOBBY),
    subscriber_policies=(SubscriberPolicy(AUDIT, max_attempts=100, deadline=50.0),),
)
IMPLEMENTS = {"audit": [AUDIT], "lobby": [LOBBY]}


def start(policy: Policy = EVENT) -> OutboundTracker:
    t = OutboundTracker(window=10, rng=random.Random(7))
    t.submit(b"m", "poker.HandStarted", "poker.HandStarted", policy, 0.0, expect=None)
    return t


def route(t: OutboundTracker, now: float, *services: str) -> Completion | None:
    return t.routed(b"m", list(services), now, [IMPLEMENTS[s] for s in services])


def ack(t: OutboundTracker, now: float, service: str) -> Completion | None:
    return t.ack(b"m", outcome=Outcome.OK, now=now, receiver=Identity(service, "1"))


def run(
    t: OutboundTracker, until: float, services: tuple[str, ...], step: float = 0.25
) -> tuple[list[Transmit], Completion | None]:
    """Tick until ``until``; each transmit is routed to ``services`` at once."""
    sent: list[Transmit] = []
    now = 0.0
    while now < until:
        now = round(now + step, 6)
        for action in t.tick(now):
            if isinstance(action, Completion):
                return sent, action
            sent.append(action)
            done = route(t, now, *services)
            if done is not None:
                return sent, done
    return sent, None


def test_the_policy_lives_as_long_as_its_longest_subscriber_deadline() -> None:
    assert EVENT.life == 50.0
    assert EVENT.limits(AUDIT) == (100, 50.0)
    assert EVENT.limits(LOBBY) == (3, 5.0)  # no entry: the event's own
    assert Policy(deadline=7.0).life == 7.0
    assert capped(EVENT, 10.0).life == 10.0
    assert capped(EVENT, 10.0).limits(AUDIT) == (100, 10.0)
    assert capped(EVENT, 10.0).deadline == 5.0
    later = shortened(EVENT, 3.5)
    assert (later.deadline, later.limits(AUDIT)[1]) == (1.5, 46.5)
    # Past every deadline: an event with declared subscribers keeps one ack timeout for
    # the re-send's answers (who acked before a restart is not kept); others 1 ms.
    assert shortened(EVENT, 60.0).life == EVENT.ack_timeout
    assert shortened(Policy(deadline=7.0), 60.0).life == 0.001


@pytest.mark.parametrize(
    "bad",
    [
        {"subscriber_policies": (SubscriberPolicy("poker.Other"),)},
        {"subscriber_policies": (SubscriberPolicy(AUDIT), SubscriberPolicy(AUDIT))},
        {"subscriber_policies": ("poker.Audit",)},
    ],
)
def test_subscriber_policies_must_name_declared_subscribers_once(bad: dict[str, object]) -> None:
    with pytest.raises(SchemaError, match="subscriber_policies"):
        EVENT.with_(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"deadline": 0.0}, {"deadline": -1.0}])
def test_a_subscriber_policy_is_checked(bad: dict[str, float]) -> None:
    with pytest.raises(SchemaError, match=r"invalid policy of subscriber 'poker\.Audit'"):
        SubscriberPolicy(AUDIT, **bad)  # type: ignore[arg-type]


def test_a_subscriber_is_waited_for_until_its_own_deadline_past_the_events() -> None:
    t = start()
    assert route(t, 0.0, "lobby") is None  # audit is down
    assert ack(t, 0.1, "lobby") is None
    sent, done = run(t, 20.0, ("lobby",))
    assert done is None  # the event's own 5 s and 3 attempts are long gone
    assert len(sent) > 3
    assert route(t, 20.1, "audit", "lobby") is None  # audit is back
    done = ack(t, 20.2, "audit")
    assert done is not None
    assert done.status is Status.ACKED


def test_the_report_fails_at_the_last_deadline_still_waited_for_naming_who() -> None:
    t = start()
    route(t, 0.0, "audit")  # lobby is down, for good
    assert ack(t, 0.1, "audit") is None
    _, done = run(t, 60.0, ("audit",))
    assert done is not None
    assert done.status is Status.FAILED
    assert done.completed_at == 5.0  # lobby's (the event's own) deadline, not audit's 50 s
    assert done.missing == (LOBBY,)
    assert done.missing_why == (GaveUp.DEADLINE,)
    assert [i.service for i in done.acked_by] == ["audit"]  # who did ack
    err = delivery_error(done)
    assert isinstance(err, AckTimeout)
    assert "poker.Lobby (its deadline passed)" in str(err)


def test_a_subscriber_that_acks_nothing_gives_up_after_its_own_attempts() -> None:
    t = start()
    route(t, 0.0, "audit", "lobby")  # both reached; neither answers for a while
    sent, done = run(t, 6.0, ("audit", "lobby"))
    # lobby's 3 attempts ran out: it is no longer waited for, but audit is, so the
    # event is still re-sent past the event's own 3 attempts and 5 s.
    assert done is None
    assert len(sent) >= 3
    done = ack(t, 6.1, "audit")
    assert done is not None
    assert done.status is Status.FAILED
    assert done.completed_at == 6.1
    assert done.missing == (LOBBY,)
    assert done.missing_why == (GaveUp.ATTEMPTS,)
    assert done.reason is Reason.OUTCOME_UNKNOWN  # lobby's attempts may have run
    assert "poker.Lobby (its attempts ran out)" in str(delivery_error(done))


def test_an_attempt_routed_to_no_instance_of_a_subscriber_does_not_spend_its_attempts() -> None:
    policy = EVENT.with_(subscriber_policies=(SubscriberPolicy(AUDIT, deadline=50.0),))
    t = start(policy)
    route(t, 0.0, "lobby")
    ack(t, 0.1, "lobby")
    sent, done = run(t, 30.0, ("lobby",))  # audit (3 attempts of its own) stays down
    assert done is None
    assert len(sent) > 3
    route(t, 30.1, "audit", "lobby")
    assert ack(t, 30.2, "audit") is not None


def test_a_late_ack_from_a_subscriber_given_up_still_counts_before_the_report() -> None:
    t = start()
    route(t, 0.0, "audit", "lobby")
    run(t, 6.0, ("audit", "lobby"))  # lobby given up (attempts), audit still waited for
    assert ack(t, 6.1, "lobby") is None  # a re-send reached it after all
    done = ack(t, 6.2, "audit")
    assert done is not None
    assert done.status is Status.ACKED


def test_an_event_without_subscriber_policies_keeps_its_limits() -> None:
    t = start(EVENT.with_(subscriber_policies=()))
    route(t, 0.0, "audit")
    ack(t, 0.1, "audit")
    _, done = run(t, 60.0, ("audit",))
    assert done is not None
    assert done.completed_at == 5.0
    assert done.missing == (LOBBY,)
