"""The inbound deduper: verdicts, what is remembered, and the memory bounds."""

from __future__ import annotations

import pytest
from ackbus.core import DedupeRecord, InboundDeduper, Outcome, RemoteError, Verdict
from hypothesis import given, settings
from hypothesis import strategies as st

PERMANENT = RemoteError("KeyError", "no such table", permanent=True)
TRANSIENT = RemoteError("TimeoutError", "db busy", permanent=False)


def test_new_then_running_then_done_with_the_cached_response() -> None:
    d = InboundDeduper()
    assert d.begin(b"m", 0.0) is Verdict.NEW
    assert d.begin(b"m", 0.1) is Verdict.RUNNING  # a retry while the handler runs
    assert d.record(b"m") is None
    d.finish(b"m", Outcome.OK, 0.2, response=b"resp")
    assert d.begin(b"m", 0.3) is Verdict.DONE
    assert d.record(b"m") == DedupeRecord(b"m", Outcome.OK, 0.2, b"resp", None)
    assert (len(d), d.running_count()) == (1, 0)


@pytest.mark.parametrize(
    ("outcome", "error", "remembered"),
    [
        (Outcome.OK, None, True),
        (Outcome.EXPIRED, None, True),
        (Outcome.REJECTED, PERMANENT, True),
        # The sender's retry is meant to run these again.
        (Outcome.REJECTED, TRANSIENT, False),
        (Outcome.REJECTED, None, False),
        (Outcome.RETRY_LATER, None, False),
    ],
)
def test_only_final_outcomes_are_remembered(
    outcome: Outcome, error: RemoteError | None, remembered: bool
) -> None:
    d = InboundDeduper()
    d.begin(b"m", 0.0)
    d.finish(b"m", outcome, 1.0, error=error)
    assert d.begin(b"m", 2.0) is (Verdict.DONE if remembered else Verdict.NEW)
    if remembered:
        record = d.record(b"m")
        assert record is not None
        assert (record.outcome, record.error) == (outcome, error)


def test_abandon_forgets_a_crashed_handler() -> None:
    d = InboundDeduper()
    d.begin(b"m", 0.0)
    d.abandon(b"m")
    assert d.begin(b"m", 1.0) is Verdict.NEW


def test_ttl_counts_from_the_finish() -> None:
    d = InboundDeduper(ttl=10.0)
    d.begin(b"a", 0.0)
    d.finish(b"a", Outcome.OK, 5.0)
    d.begin(b"b", 0.0)  # still running: never expires
    assert d.tick(14.9) == 0
    assert d.begin(b"a", 14.9) is Verdict.DONE
    assert d.next_deadline() == 15.0
    assert d.tick(15.0) == 1
    assert d.begin(b"a", 15.0) is Verdict.NEW
    assert d.begin(b"b", 100.0) is Verdict.RUNNING


def test_capacity_evicts_the_oldest_finished_never_a_running_one() -> None:
    d = InboundDeduper(capacity=3)
    d.begin(b"run", 0.0)
    for i, msg_id in enumerate((b"a", b"b")):
        d.begin(msg_id, float(i))
        d.finish(msg_id, Outcome.OK, float(i))
    d.begin(b"c", 3.0)  # a fourth entry: "a", the oldest finished, goes
    assert d.record(b"a") is None
    assert d.record(b"b") is not None
    assert d.begin(b"run", 4.0) is Verdict.RUNNING
    assert len(d) == 3


def test_export_and_load_round_trip_dropping_expired() -> None:
    d = InboundDeduper(ttl=100.0)
    for i in range(5):
        d.begin(bytes([i]), float(i))
        d.finish(bytes([i]), Outcome.OK, float(i * 10), response=bytes([i]) * 3)
    d.begin(b"running", 0.0)
    records = d.export()
    assert [r.msg_id for r in records] == [bytes([i]) for i in range(5)]

    fresh = InboundDeduper(ttl=100.0, capacity=3)
    fresh.load(reversed(records), now=115.0)  # 0 and 10 are past the ttl by then
    assert [r.msg_id for r in fresh.export()] == [b"\x02", b"\x03", b"\x04"]
    assert fresh.begin(b"\x03", 115.0) is Verdict.DONE
    assert fresh.begin(b"\x01", 115.0) is Verdict.NEW


def test_refinishing_replaces_the_record() -> None:
    d = InboundDeduper(capacity=2)
    d.begin(b"m", 0.0)
    d.finish(b"m", Outcome.OK, 1.0, response=b"first")
    d.finish(b"m", Outcome.OK, 2.0, response=b"second")
    record = d.record(b"m")
    assert record is not None
    assert record.response == b"second"
    assert [r.msg_id for r in d.export()] == [b"m"]


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        InboundDeduper(capacity=0)
    with pytest.raises(ValueError, match="ttl"):
        InboundDeduper(ttl=0)


@settings(max_examples=200)
@given(
    capacity=st.integers(1, 50),
    ttl=st.floats(0.1, 100.0),
    steps=st.lists(
        st.tuples(st.sampled_from(["finish", "abandon", "keep"]), st.floats(0.0, 5.0)),
        min_size=1,
        max_size=400,
    ),
)
def test_memory_stays_flat_under_endless_unique_ids(
    capacity: int, ttl: float, steps: list[tuple[str, float]]
) -> None:
    """Every id is new; handlers finish, crash or keep running (at most `capacity` of them,
    as a receiver's credit bounds them). Whatever happens, the entries stay bounded."""
    d = InboundDeduper(capacity=capacity, ttl=ttl)
    now = 0.0
    running: list[bytes] = []
    for i, (fate, dt) in enumerate(steps):
        now += dt
        msg_id = i.to_bytes(4, "big")
        assert d.begin(msg_id, now) is Verdict.NEW
        if fate == "finish":
            d.finish(msg_id, Outcome.OK, now)
        elif fate == "abandon":
            d.abandon(msg_id)
        else:
            running.append(msg_id)
            if len(running) > capacity // 2:
                d.finish(running.pop(0), Outcome.OK, now)
        d.tick(now)
        assert len(d) <= capacity
        assert len(d._order) <= 2 * capacity + 1
        assert all(d.begin(r, now) is Verdict.RUNNING for r in running)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 12),
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=10),
        min_size=1,
        max_size=30,
    ),
)
def test_finish_ok_equals_finish_ok_per_id(
    capacity: int, batches: list[list[tuple[int, bool]]]
) -> None:
    """A receiver finishes the handlers of a whole batch with one finish_ok call, at
    the batch's end: every verdict, record and bound is what finishing them one by one
    there gives (ids repeat: duplicates, refinished records, evictions, running entries
    left running)."""
    one, many = (
        InboundDeduper(capacity=capacity, ttl=50.0),
        InboundDeduper(capacity=capacity, ttl=50.0),
    )
    now = 0.0
    for batch in batches:
        now += 1.0
        finished: list[bytes] = []
        for n, handled in batch:
            mid = n.to_bytes(2, "big")
            verdict = one.begin(mid, now)
            assert many.begin(mid, now) is verdict
            if verdict is Verdict.NEW and handled:
                finished.append(mid)
        for mid in finished:
            one.finish(mid, Outcome.OK, now)
        many.finish_ok(finished, now)
        assert one.export() == many.export()
        assert len(one) == len(many)
        assert one.running_count() == many.running_count()
        assert one.tick(now) == many.tick(now)
