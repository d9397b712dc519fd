"""The deterministic simulation: invariants over many seeds, and proof that it can fail."""

import itertools
import subprocess
import sys

import pytest
from ackbus.core import dedupe, routing
from ackbus.testing import simulate

SEEDS = 600


def test_invariants_hold_over_many_seeds() -> None:
    failing = {}
    totals = {"messages": 0, "acked": 0, "reruns": 0}
    for seed in range(SEEDS):
        result = simulate.run_seed(seed)
        totals["messages"] += result.messages
        totals["acked"] += result.acked
        totals["reruns"] += sum(result.reruns.values())
        if not result.ok:
            failing[seed] = result.violations[:3]
    assert failing == {}, (
        f"failing seeds {sorted(failing)}; reproduce with "
        f"python -m ackbus.testing.simulate --seed {min(failing)} -v: {failing}"
    )
    # The faults were real: some messages needed a second handler run after a crash.
    assert totals["messages"] == SEEDS * 24
    assert totals["reruns"] > 0


def test_a_seed_reproduces_exactly() -> None:
    first = simulate.run_seed(1234)
    second = simulate.run_seed(1234)
    assert (first.acked, first.failed, first.reruns, first.net, first.sim_time) == (
        second.acked,
        second.failed,
        second.reruns,
        second.net,
        second.sim_time,
    )


def _broken_begin(self: dedupe.InboundDeduper, msg_id: bytes, now: float) -> dedupe.Verdict:
    return dedupe.Verdict.NEW


def test_simulation_catches_a_deduper_that_forgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedupe.InboundDeduper, "begin", _broken_begin)
    bad = [s for s in range(40) if any("twice" in v for v in simulate.run_seed(s).violations)]
    assert bad, "a deduper that never dedupes went unnoticed"


def test_simulation_catches_routing_that_is_not_sticky(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing.RoutingTable, "_pick", _random_pick)
    bad = [s for s in range(40) if any("sticky" in v for v in simulate.run_seed(s).violations)]
    assert bad, "routing that ignores stickiness went unnoticed"


_rotation = itertools.count()


def _random_pick(
    self: routing.RoutingTable, key: object, msg_id: bytes, peers: list[bytes], now: float
) -> bytes:
    # Deterministic but not sticky: a different instance for every attempt.
    return peers[next(_rotation) % len(peers)]


def test_command_line_runs_the_seeds_it_is_given() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "ackbus.testing.simulate", "--seeds", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "3 seeds:" in ok.stdout
    assert "0 failing" in ok.stdout
