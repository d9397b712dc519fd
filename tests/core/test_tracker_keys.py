"""The outbound tracker's ordering keys: one message of a key in flight at a time, in
submit order; a retry holds back its key and nothing else; a failure moves the key on."""

from __future__ import annotations

import random

from ackbus import Policy
from ackbus.core import Admit, MsgState, OutboundTracker, Outcome, Reason, Status, Transmit
from hypothesis import given, settings
from hypothesis import strategies as st

P = Policy(
    ack_timeout=1.0, max_attempts=3, backoff_base=0.5, backoff_cap=2.0, jitter=0.0, deadline=30.0
)


def tracker(window: int = 100) -> OutboundTracker:
    return OutboundTracker(window=window, rng=random.Random(3))


def sent(actions: list[object]) -> list[bytes]:
    return [a.msg_id for a in actions if isinstance(a, Transmit)]


def test_a_key_has_one_message_in_flight_and_the_next_goes_when_it_is_acked() -> None:
    t = tracker()
    assert t.submit(b"a1", "T", "d", P, 0.0, 1, 7) is Admit.SEND
    assert t.submit(b"a2", "T", "d", P, 0.0, 1, 7) is Admit.QUEUED
    assert t.submit(b"a3", "T", "d", P, 0.0, 1, 7) is Admit.QUEUED
    assert t.submit(b"b1", "T", "d", P, 0.0, 1, 8) is Admit.SEND  # another key: its own
    assert t.state(b"a2") is MsgState.KEYED
    assert t.in_flight("d") == 2  # those waiting for their key hold no window slot
    assert t.ack(b"a1", outcome=Outcome.OK, now=0.1) is not None
    assert t.state(b"a2") is MsgState.READY
    assert sent(t.tick(0.1)) == [b"a2"]
    assert [c.msg_id for c in t.ack_ok([b"a2"], 0.2, None)] == [b"a2"]  # the fast path too
    assert sent(t.tick(0.2)) == [b"a3"]
    t.ack_ok([b"a3", b"b1"], 0.3, None)
    assert t.pending_count() == 0
    assert t.keys_held() == 0


def test_a_retry_holds_back_its_key_and_nothing_else() -> None:
    t = tracker()
    t.submit(b"a1", "T", "d", P, 0.0, 1, 7)
    t.submit(b"a2", "T", "d", P, 0.0, 1, 7)
    t.submit(b"b1", "T", "d", P, 0.0, 1, 8)
    t.submit(b"b2", "T", "d", P, 0.0, 1, 8)
    t.ack(b"b1", outcome=Outcome.OK, now=0.2)  # key 8 moves on
    assert sent(t.tick(0.2)) == [b"b2"]
    out = sent(t.tick(1.0) + t.tick(1.5))  # a1 timed out, backs off, retries
    assert out == [b"a1"]
    assert t.attempts(b"a1") == 2
    assert t.state(b"a2") is MsgState.KEYED  # still behind a1
    t.ack(b"a1", outcome=Outcome.OK, now=1.6)
    assert sent(t.tick(1.6)) == [b"a2"]


def test_a_failed_message_moves_its_key_on() -> None:
    t = tracker()
    t.submit(b"poison", "T", "d", P, 0.0, 1, 7)
    t.submit(b"next", "T", "d", P, 0.0, 1, 7)
    rejected = t.ack(b"poison", outcome=Outcome.REJECTED, now=0.1)
    assert rejected is not None
    assert rejected.reason is Reason.REJECTED
    assert sent(t.tick(0.1)) == [b"next"]


def test_a_message_waiting_for_its_key_fails_at_its_deadline_never_sent() -> None:
    t = tracker()
    short = P.with_(deadline=2.0)
    t.submit(b"a1", "T", "d", P, 0.0, 1, 7)
    t.submit(b"a2", "T", "d", short, 0.0, 1, 7)
    t.submit(b"a3", "T", "d", P, 0.0, 1, 7)
    done = [a for a in t.tick(2.0) if not isinstance(a, Transmit)]
    assert [(c.msg_id, c.status, c.reason, c.attempts) for c in done] == [  # type: ignore[attr-defined]
        (b"a2", Status.FAILED, Reason.TIMEOUT, 0)
    ]
    t.ack(b"a1", outcome=Outcome.OK, now=2.1)
    assert sent(t.tick(2.1)) == [b"a3"]  # a2 left the line, a3 is next
    c = t.cancel(b"a3", 2.2)
    assert c is not None
    assert t.keys_held() == 0
    assert t.pending_count() == 0


def test_the_next_of_a_key_queues_for_the_window_when_it_is_full() -> None:
    t = tracker(window=1)
    t.submit(b"a1", "T", "d", P, 0.0, 1, 7)
    t.submit(b"a2", "T", "d", P, 0.0, 1, 7)
    t.submit(b"x", "T", "d", P, 0.0)  # unkeyed: waits for the window
    assert t.queued("d") == 1
    t.ack(b"a1", outcome=Outcome.OK, now=0.1)
    assert sent(t.tick(0.1)) == [b"x"]  # the window's line first come, first served
    assert t.state(b"a2") is MsgState.QUEUED
    t.ack(b"x", outcome=Outcome.OK, now=0.2)
    assert sent(t.tick(0.2)) == [b"a2"]


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.integers(1, 5), min_size=1, max_size=40),
    answers=st.lists(st.sampled_from(["ok", "reject", "late", "cancel"]), max_size=60),
    window=st.integers(1, 4),
)
def test_per_key_submit_order_and_one_in_flight(
    keys: list[int], answers: list[str], window: int
) -> None:
    """Whatever the answers: a message of a key is transmitted for the first time only
    after every earlier one of its key settled, and at most one per key is out."""
    t = tracker(window)
    ids = [i.to_bytes(2, "big") for i in range(len(keys))]
    key_of = dict(zip(ids, keys, strict=True))
    settled: set[bytes] = set()
    out: set[bytes] = set()
    first_sent: list[bytes] = []
    now = 0.0

    def note(actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, Transmit):
                if a.attempt == 1:
                    first_sent.append(a.msg_id)
                out.add(a.msg_id)
            else:
                settled.add(a.msg_id)  # type: ignore[attr-defined]
                out.discard(a.msg_id)  # type: ignore[attr-defined]

    for mid in ids:
        if t.submit(mid, "T", "d", P, now, 1, key_of[mid]) is Admit.SEND:
            first_sent.append(mid)
            out.add(mid)
    for i, answer in enumerate(answers):
        now += 0.3
        note(t.tick(now))
        live = sorted(out - settled)
        if not live:
            continue
        mid = live[i % len(live)]
        if answer == "ok":
            c = t.ack(mid, outcome=Outcome.OK, now=now)
        elif answer == "reject":
            c = t.ack(mid, outcome=Outcome.REJECTED, now=now)
        elif answer == "cancel":
            c = t.cancel(mid, now)
        else:
            c = None
        if c is not None:
            note([c])
        for k in set(keys):  # one per key out at a time
            assert sum(1 for m in out - settled if key_of[m] == k) <= 1
    note(t.tick(now + 100.0))
    while t.pending_count():
        now += 100.0
        note(t.tick(now))
    for k in set(keys):
        of_key = [m for m in ids if key_of[m] == k]
        sent_of_key = [m for m in first_sent if key_of[m] == k]
        assert sent_of_key == [m for m in of_key if m in sent_of_key]  # submit order
    assert t.keys_held() == 0
