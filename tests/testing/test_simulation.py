"""The deterministic simulation: invariants over many seeds, and proof that it can fail."""

import itertools
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ackbus import Identity
from ackbus.core import _pending, dedupe, routing
from ackbus.core.endpoint_protocol import EndpointProtocol
from ackbus.testing import simulate
from ackbus.testing.simstore import SimStore

SEEDS = 600


@pytest.mark.timeout(300)  # CPU-bound: about 20 s alone, over 60 s at load 16 on 2 cores
def test_invariants_hold_over_many_seeds() -> None:
    failing = {}
    totals = {"messages": 0, "acked": 0, "reruns": 0, "durable": 0, "resumed": 0, "stalls": 0}
    for seed in range(SEEDS):
        result = simulate.run_seed(seed)
        totals["messages"] += result.messages
        totals["acked"] += result.acked
        totals["reruns"] += sum(result.reruns.values())
        totals["durable"] += bool(result.durable)
        totals["resumed"] += result.store["resumed from the outbox"]
        totals["stalls"] += result.stalls["stalled receivers"]
        if not result.ok:
            failing[seed] = result.violations[:3]
    assert failing == {}, (
        f"failing seeds {sorted(failing)}; reproduce with "
        f"python -m ackbus.testing.simulate --seed {min(failing)} -v: {failing}"
    )
    # The faults were real: some messages needed a second handler run after a crash.
    assert totals["messages"] == SEEDS * 24
    assert totals["reruns"] > 0
    # About two seeds in three run some nodes durable; crashed durable senders resumed.
    assert SEEDS / 2 < totals["durable"] < SEEDS
    assert totals["resumed"] > 0
    # Receivers stalled (loop frozen, connection up) in about one seed in two.
    assert totals["stalls"] > SEEDS / 4


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
    self: routing.RoutingTable,
    key: object,
    msg_id: bytes,
    peers: list[bytes],
    now: float,
    first: bool = True,
    order: int = 0,
) -> bytes:
    # Deterministic but not sticky: a different instance for every attempt.
    return peers[next(_rotation) % len(peers)]


def test_simulation_catches_a_sender_that_ignores_ordering_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = EndpointProtocol.submit

    def keyless(self: EndpointProtocol, *args: Any, **kw: Any) -> bool:
        return real(self, *args[:6])  # every message as if it had no key

    monkeypatch.setattr(EndpointProtocol, "submit", keyless)
    bad = [
        s
        for s in range(60)
        if any("out of send order" in v for v in simulate.run_seed(s, messages=60).violations)
    ]
    assert bad, "a sender that sends a key's messages all at once went unnoticed"


def test_simulation_catches_a_receiver_that_runs_a_key_twice_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(EndpointProtocol, "keys_held", lambda self: 0)
    real = EndpointProtocol.accept

    def keyless(self: EndpointProtocol, hub: int, item: Any, now: float) -> bool:
        self._keys.clear()  # forgets which keys run
        return real(self, hub, item, now)

    monkeypatch.setattr(EndpointProtocol, "accept", keyless)
    # Two senders share the keys: only the receiver keeps their messages apart.
    bad = [
        s
        for s in range(60)
        if any(
            "two messages of ordering key" in v
            for v in simulate.run_seed(s, messages=60).violations
        )
    ]
    assert bad, "a receiver running two messages of a key at once went unnoticed"


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


def test_the_simulation_drives_the_protocol_classes_the_runtime_drives() -> None:
    from ackbus import Endpoint, Hub
    from ackbus.core.endpoint_protocol import EndpointProtocol
    from ackbus.core.hub_protocol import HubProtocol
    from ackbus.testing.simactors import Ledger, SimEndpoint, SimHub
    from ackbus.testing.simnet import SimNetwork

    net = SimNetwork(random.Random(0))
    hub = SimHub(net, Ledger())
    net.add(hub)
    ep = SimEndpoint("a/0", Identity("a", "0"), net, Ledger(), random.Random(0))
    assert type(ep.proto) is type(Endpoint("a", "tcp://127.0.0.1:1")._proto) is EndpointProtocol
    assert type(hub.proto) is type(Hub("tcp://127.0.0.1:1")._proto) is HubProtocol


def _forgetful_reack(self: EndpointProtocol, hub: int, item: object) -> None:
    """A glue bug: a duplicate of a handled message gets no answer."""


def test_simulation_catches_a_glue_bug_in_the_endpoint_protocol(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(EndpointProtocol, "reack", _forgetful_reack)
    bad = [s for s in range(40) if simulate.run_seed(s).violations]
    assert bad, "an endpoint that never re-acks duplicates went unnoticed"


@pytest.mark.parametrize("seed", range(6))
def test_a_hub_restart_with_events_in_flight_loses_no_event(seed: int) -> None:
    """The restarted hub routes first attempts before the subscribers said HELLO again;
    publishers wait for every declared subscriber and re-send, so none misses one."""
    result = simulate.run_seed(seed, scenario="hub-restart-events")
    assert result.ok, result.violations[:3]
    assert result.acked == result.messages == 24


def _no_declared_subscribers(p: object) -> tuple[str, ...]:
    """A tracker bug: declared subscribers are never missing (routed-to-nobody is done)."""
    return ()


def test_simulation_catches_events_settled_without_their_subscribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_pending, "missing", _no_declared_subscribers)
    bad = [
        s
        for s in range(6)
        if any("never handled by subscribers" in v for v in _restart_violations(s))
    ]
    assert bad, "events acked without their declared subscribers went unnoticed"


def _restart_violations(seed: int) -> list[str]:
    return simulate.run_seed(seed, scenario="hub-restart-events").violations


# -- durable mode: the runtime's Durable on a simulated store -------------------------------


def test_durable_nodes_hold_their_invariants_across_crashes() -> None:
    """Every service and sender durable: no committed handler run twice on one store,
    every message whose outbox row committed delivered although its sender crashed."""
    results = [simulate.run_seed(seed, durability="all") for seed in range(100)]
    failing = {r.seed: r.violations[:3] for r in results if not r.ok}
    assert failing == {}, failing
    store: Counter[str] = sum((r.store for r in results), Counter())
    # The crashes were real: commits in flight landed or were lost, outboxes resumed,
    # sends not yet committed were lost (allowed).
    assert store["landed at crash"] > 0, store
    assert store["lost at crash"] > 0, store
    assert store["resumed from the outbox"] > 0
    assert sum(r.unaccepted for r in results) > 0


def test_the_simulation_runs_the_runtimes_durable_class(tmp_path: Path) -> None:
    from ackbus import Endpoint
    from ackbus.endpoint._durable import Durable
    from ackbus.testing.simactors import Ledger, SimEndpoint, SimHub
    from ackbus.testing.simnet import SimNetwork

    net = SimNetwork(random.Random(0))
    net.add(SimHub(net, Ledger()))
    ep = SimEndpoint("a/0", Identity("a", "0"), net, Ledger(), random.Random(0), durable=True)
    assert ep.durable is not None
    assert isinstance(ep.store, SimStore)
    runtime = Endpoint("a", "tcp://127.0.0.1:1", store=f"sqlite:///{tmp_path / 'a.db'}")
    assert type(ep.durable.durable) is type(runtime._durable) is Durable


def _first_bad(marker: str, seeds: range) -> int | None:
    for seed in seeds:
        if any(marker in v for v in simulate.run_seed(seed, durability="all").violations):
            return seed
    return None


def test_simulation_catches_a_disk_that_loses_committed_inbox_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crash = SimStore.crash

    def forgetful(self: SimStore) -> None:
        crash(self)
        self.inbox.clear()  # committed, acked, and gone after the crash

    monkeypatch.setattr(SimStore, "crash", forgetful)
    seed = _first_bad("committed success twice", range(80))
    assert seed is not None, "a durable receiver that ran a handler twice went unnoticed"


def test_simulation_catches_durable_mode_acking_before_the_inbox_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ackbus.endpoint._durable import Durable

    done = Durable._done

    def ack_first(self: Durable, unit: Any, hub: Any, item: Any, route: Any, *end: Any) -> None:
        self._host().answer(hub, item, route, *end)  # the ack leaves before the commit
        done(self, unit, hub, item, route, *end)

    monkeypatch.setattr(Durable, "_done", ack_first)
    init = SimStore.__init__

    def slow_disk(self: SimStore, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.latency = 0.3  # so that crashes land between the early ack and the commit

    monkeypatch.setattr(SimStore, "__init__", slow_disk)
    assert _first_bad("never ran it", range(80)) is not None


def test_a_durable_seed_reproduces_exactly() -> None:
    first, second = (simulate.run_seed(77, durability="some") for _ in range(2))
    assert first.durable
    assert first.durable == second.durable
    assert (first.acked, first.reruns, first.net, first.sim_time, first.store) == (
        second.acked,
        second.reruns,
        second.net,
        second.sim_time,
        second.store,
    )
