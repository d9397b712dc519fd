"""Liveness: negotiated intervals, heartbeats when idle, death after missed intervals."""

from __future__ import annotations

import pytest
from ackbus.core import Liveness, PeerDead, SendHeartbeat, negotiate
from hypothesis import given
from hypothesis import strategies as st


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_negotiation_is_symmetric_and_takes_the_larger(a: int, b: int) -> None:
    assert negotiate(a, b) == negotiate(b, a) == max(a, b)


def test_negotiation_refuses_negative_proposals() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        negotiate(-1, 100)


def test_idle_link_gets_heartbeats_and_a_silent_peer_dies() -> None:
    live: Liveness[str] = Liveness(interval=1.0, misses=3)
    live.add("p", 0.0)
    assert live.tick(0.99) == []
    assert live.tick(1.0) == [SendHeartbeat("p")]
    assert live.tick(2.0) == [SendHeartbeat("p")]
    live.seen("p", 2.5)
    assert live.tick(3.0) == [SendHeartbeat("p")]
    assert live.tick(5.4) == [SendHeartbeat("p")]  # missed beats collapse into one
    # 3 intervals of silence after the last traffic at 2.5
    assert live.tick(5.5) == [PeerDead("p", 3.0)]
    assert not live.is_alive("p")
    assert live.tick(100.0) == []
    assert live.next_deadline() is None


def test_traffic_replaces_heartbeats() -> None:
    live: Liveness[str] = Liveness(interval=1.0, misses=3)
    live.add("p", 0.0)
    actions = []
    for step in range(1, 50):
        now = step * 0.5
        live.sent("p", now)  # we talk to it...
        live.seen("p", now)  # ...and it talks to us
        actions += live.tick(now)
    assert actions == []
    assert live.is_alive("p")


def test_a_heartbeat_is_answered_once_per_half_interval() -> None:
    live: Liveness[str] = Liveness(interval=1.0, misses=3)
    assert not live.answer("p", 0.0)  # not watched: nothing to answer
    live.add("p", 0.0)
    assert not live.answer("p", 0.2)  # we were heard from (added) 0.2 s ago
    assert live.answer("p", 0.6)
    assert not live.answer("p", 0.7)  # two sides that both answer stop here
    assert live.answer("p", 1.6)


def test_answers_stand_in_for_our_own_heartbeats_until_the_peer_stops() -> None:
    live: Liveness[str] = Liveness(interval=1.0, misses=3)
    live.add("p", 0.0)
    t = 0.6
    assert live.answer("p", t)  # the peer's first heartbeat
    actions = []
    for _ in range(10):  # then one every interval, each a little late
        t += 1.02
        actions += live.tick(t - 0.01)  # just before it arrives: our timer keeps quiet
        live.seen("p", t)
        assert live.answer("p", t)
        actions += live.tick(t)
    assert actions == []  # every heartbeat we sent was an answer
    # The peer falls silent: our own timer sends again, 1.5 intervals after the answer.
    assert live.tick(t + 1.49) == []
    assert live.tick(t + 1.5) == [SendHeartbeat("p")]
    assert live.tick(t + 2.5) == [SendHeartbeat("p")]  # and every interval after it
    assert [type(a) for a in live.tick(t + 3.0)] == [PeerDead]


def test_each_peer_uses_its_negotiated_interval() -> None:
    live: Liveness[bytes] = Liveness(interval=1.0, misses=2)
    live.add(b"fast", 0.0)
    live.add(b"slow", 0.0, interval=negotiate(1000, 5000) / 1000)
    dead = [a.peer for t in range(1, 11) for a in live.tick(float(t)) if isinstance(a, PeerDead)]
    assert dead == [b"fast", b"slow"]


def test_remove_and_readd_do_not_multiply_timers() -> None:
    live: Liveness[str] = Liveness(interval=1.0, misses=3)
    for i in range(200):
        live.add("p", i * 0.01)
        live.remove("p")
        live.add("p", i * 0.01)
    heartbeats = [a for a in live.tick(3.0) if isinstance(a, SendHeartbeat)]
    assert len(heartbeats) == 1
    live.tick(3.5)
    assert len(live._heap) <= 4 * len(live.peers()) + 64


def test_two_sides_configured_differently_stay_alive_and_both_notice_a_cut() -> None:
    """Two peers heartbeat each other over a link with delay; each proposes its own interval
    and both use the negotiated one. Cutting the link makes both declare the other dead
    within misses * interval (+ one interval of scheduling slack)."""
    interval = negotiate(200, 500) / 1000
    a: Liveness[str] = Liveness(interval=0.2, misses=3)
    b: Liveness[str] = Liveness(interval=0.5, misses=3)
    a.add("b", 0.0, interval=interval)
    b.add("a", 0.0, interval=interval)
    sides = {"a": (a, "b"), "b": (b, "a")}
    in_flight: list[tuple[float, str]] = []  # (arrival, receiver)
    cut_at = 30.0
    died: dict[str, float] = {}
    now = 0.0
    while now < 40.0 and len(died) < 2:
        now = round(now + 0.01, 2)
        for arrival, receiver in [m for m in in_flight if m[0] <= now]:
            in_flight.remove((arrival, receiver))
            live, sender = sides[receiver]
            live.seen(sender, now)
        for name, (live, other) in sides.items():
            for action in live.tick(now):
                if isinstance(action, PeerDead):
                    died[name] = now
                elif now < cut_at:
                    in_flight.append((now + 0.05, other))
    assert set(died) == {"a", "b"}
    for t in died.values():
        assert cut_at < t <= cut_at + 4 * interval


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        Liveness(interval=0)
    with pytest.raises(ValueError, match="misses"):
        Liveness(interval=1, misses=0)


def test_a_late_check_is_put_off_once_our_own_loop_was_not_running() -> None:
    """A check that runs more than half an interval late saw our stall, not the peer's
    silence: it is put off one interval. A peer heard from meanwhile lives on; one that
    stays silent is declared dead at the next check, however late."""
    live: Liveness[str] = Liveness(interval=1.0, misses=3)
    live.add("p", 0.0)
    live.seen("p", 1.0)
    # Our loop stalled from 1.0 to 9.0: the check due at 4.0 runs at 9.0.
    assert [a for a in live.tick(9.0) if isinstance(a, PeerDead)] == []
    assert live.is_alive("p")
    live.seen("p", 9.01)  # what the peer sent while we stalled, read on waking
    assert [a for a in live.tick(10.0) if isinstance(a, PeerDead)] == []
    # Stalled again, 10 -> 20: input was read since the put-off, so put off again.
    assert [a for a in live.tick(20.0) if isinstance(a, PeerDead)] == []
    # Nothing more from the peer: the next check, even late, declares it dead.
    assert [a for a in live.tick(30.0) if isinstance(a, PeerDead)] == [PeerDead("p", 30.0 - 9.01)]
    assert not live.is_alive("p")


def test_a_check_on_time_is_not_put_off() -> None:
    live: Liveness[str] = Liveness(interval=1.0, misses=3)
    live.add("p", 0.0)
    dead = [a for t in (1.0, 2.0, 3.4) for a in live.tick(t) if isinstance(a, PeerDead)]
    assert dead == [PeerDead("p", 3.4)]  # due at 3.0, 0.4 late: under half an interval
    assert dead[0].interval == 1.0


def test_a_peer_quiet_for_more_than_one_and_a_half_intervals_is_suspect() -> None:
    live: Liveness[str] = Liveness(interval=1.0, misses=3)
    live.add("p", 0.0)
    assert not live.suspect("p", 1.5)
    assert live.suspect("p", 1.51)  # suspect, though not yet dead (3.0)
    live.seen("p", 1.6)
    assert not live.suspect("p", 2.0)
    assert live.suspect("nobody", 0.0)  # a peer not watched is suspect
