"""The hub protocol alone: events and ``now`` in, actions out through a recording IO."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from ackbus import Identity, RemoteProtocolError
from ackbus.core import Instance, RoutingTable
from ackbus.core.hub_protocol import IN_USE, KIND_EVENT, NOT_REGISTERED, HubProtocol
from ackbus.wire import KIND_COMMAND
from ackbus.wire import KIND_EVENT as WIRE_KIND_EVENT
from ackbus.wire import NOT_REGISTERED as WIRE_NOT_REGISTERED


@dataclass
class Item:
    id: bytes
    type: str = "alpha.Do"
    recipient: str = ""
    kind: int = KIND_COMMAND
    attempt: int = 1
    priority: int = 0
    key: int = 0
    method: str = ""


@dataclass
class Run:
    ids: list[bytes]
    type: str = "alpha.Do"
    recipient: str = ""
    method: str = ""

    def items(self) -> list[Item]:
        return [Item(i, self.type, self.recipient, method=self.method) for i in self.ids]


@dataclass
class Group:
    peer: bytes
    ok_ids: list[bytes]
    full: list[bytes] = field(default_factory=list)


@dataclass
class Recorder:
    actions: list[tuple[Any, ...]] = field(default_factory=list)
    up: set[bytes] = field(default_factory=set)
    """Peers whose connection the transport says is up."""

    def forward(self, target: bytes, item: Item, origin: bytes) -> None:
        self.actions.append(("forward", target, item.id, origin))

    def forward_run(self, run: Run, targets: Sequence[bytes], origin: bytes) -> None:
        self.actions.append(("forward_run", list(targets), origin))

    def routed(
        self,
        origin: bytes,
        msg_id: bytes,
        services: tuple[str, ...],
        implements: tuple[tuple[str, ...], ...],
    ) -> None:
        self.actions.append(("routed", origin, msg_id, services, implements))

    def no_route(self, origin: bytes, msg_id: bytes, reason: str, attempt: int) -> None:
        self.actions.append(("no_route", origin, msg_id, reason))

    def retry_later(self, origin: bytes, msg_id: bytes, after: float, attempt: int) -> None:
        self.actions.append(("retry_later", origin, msg_id, round(after, 3)))

    def held(self, origin: bytes, msg_id: bytes, attempt: int, lease: float) -> None:
        self.actions.append(("held", origin, msg_id, attempt))

    def settled(self, full: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """A full ack here is its id, or ``b"~" + id`` for an IN_PROGRESS notice."""
        ended = [raw for raw in full if not raw.startswith(b"~")]
        return ended, [raw[1:] for raw in full if raw.startswith(b"~")]

    def split(self, run: Run) -> list[Item]:
        return run.items()

    def forward_acks(
        self, origin: bytes, ok_ids: Sequence[bytes], full: Sequence[bytes], receiver: bytes
    ) -> None:
        self.actions.append(("acks", origin, list(ok_ids), list(full), receiver))

    def refused(self, origin: bytes, msg_id: bytes, code: str, reason: str) -> None:
        self.actions.append(("refused", origin, msg_id, code, reason))

    def send_welcome(self, peer: bytes, heartbeat_ms: int) -> None:
        self.actions.append(("welcome", peer, heartbeat_ms))

    def send_heartbeat(self, peer: bytes) -> None:
        self.actions.append(("heartbeat", peer))

    def forgotten(
        self, peer: bytes, instance: Instance | None, why: str, tell: bool = False
    ) -> None:
        self.actions.append(("forgotten", peer, why, "told") if tell else ("forgotten", peer, why))

    def connected(self, peer: bytes) -> bool:
        self.actions.append(("connected?", peer))
        return peer in self.up

    def stalled(self, peer: bytes, instance: Instance | None, silence: float, up: bool) -> None:
        self.actions.append(("stalled" if up else "resumed", peer, round(silence, 1)))

    def take(self) -> list[tuple[Any, ...]]:
        out, self.actions = self.actions, []
        return out


def hub(grace: float = 0.0) -> tuple[HubProtocol[Item, Run, bytes], Recorder]:
    io = Recorder()
    proto: HubProtocol[Item, Run, bytes] = HubProtocol(io, heartbeat=1.0, misses=3, grace=grace)
    proto.start(0.0)
    for peer, service, commands, events, implements in (
        (b"a1", "alpha", ["alpha.Do"], ["ev.Tick"], ["schema.Alpha"]),
        (b"b1", "beta", ["beta.Do"], ["ev.Tick"], []),
        (b"s", "sender", [], [], []),
    ):
        ident = Identity(service, peer.decode())
        proto.hello(peer, ident, b"tok-" + peer, commands, events, 100, 500, 0.0, implements)
    io.take()
    return proto, io


def test_constants_are_the_wires() -> None:
    assert (KIND_EVENT, NOT_REGISTERED) == (WIRE_KIND_EVENT, WIRE_NOT_REGISTERED)


def test_hello_is_welcomed_with_the_slower_heartbeat() -> None:
    io = Recorder()
    proto: HubProtocol[Item, Run, bytes] = HubProtocol(io, heartbeat=1.0)
    proto.hello(b"p", Identity("x", "1"), b"t1", [], [], 0, 2500, 0.0)
    proto.hello(b"q", Identity("x", "2"), b"t2", [], [], 0, 100, 0.0)
    assert io.take() == [("welcome", b"p", 2500), ("welcome", b"q", 1000)]


def test_a_command_goes_to_its_service_and_an_unknown_one_gets_no_route() -> None:
    proto, io = hub()
    proto.begin(b"s", b"1" * 16, 0.1)
    proto.route(b"s", Item(b"1" * 16), 0.1)
    proto.route(b"s", Item(b"2" * 16, type="nobody.Do"), 0.1)
    (told, fwd, nr) = io.take()
    # Forwarded with the sender's registered identity (its token), which is told
    # which service handles the type (its tracker takes acks from that one alone).
    assert told == ("routed", b"s", b"1" * 16, ("alpha",), ((),))
    assert fwd == ("forward", b"a1", b"1" * 16, b"tok-s")
    assert nr[:3] == ("no_route", b"s", b"2" * 16)
    assert "nobody.Do" in nr[3]
    assert (proto.stats.routed, proto.stats.no_route) == (1, 1)


def test_an_event_goes_to_every_subscribing_service_and_its_sender_is_told() -> None:
    proto, io = hub()
    proto.route(b"s", Item(b"e" * 16, type="ev.Tick", kind=KIND_EVENT), 0.1)
    actions = io.take()
    assert sorted(a[1] for a in actions if a[0] == "forward") == [b"a1", b"b1"]
    # Each target with the schema services it runs: how the publisher matches its
    # declared subscribers.
    assert actions[-1] == ("routed", b"s", b"e" * 16, ("alpha", "beta"), (("schema.Alpha",), ()))


def test_retries_wait_out_the_grace_period_first_attempts_do_not() -> None:
    proto, io = hub(grace=2.0)
    proto.route(b"s", Item(b"1" * 16), 0.5)
    proto.route(b"s", Item(b"2" * 16, attempt=2), 0.5)
    proto.route(b"s", Item(b"3" * 16, attempt=2), 2.5)
    proto.route(b"s", Item(b"4" * 16), 2.5)
    assert io.take() == [
        ("routed", b"s", b"1" * 16, ("alpha",), ((),)),
        ("forward", b"a1", b"1" * 16, b"tok-s"),
        ("retry_later", b"s", b"2" * 16, 1.5),
        ("routed", b"s", b"3" * 16, ("alpha",), ((),)),  # told again with a retry
        ("forward", b"a1", b"3" * 16, b"tok-s"),
        ("forward", b"a1", b"4" * 16, b"tok-s"),  # told once per connection and type
    ]
    assert proto.stats.deferred == 1


def test_a_run_is_routed_in_one_call() -> None:
    proto, io = hub()
    proto.route_run(b"s", Run([b"1" * 16, b"2" * 16]), 0.1)
    assert io.take() == [
        ("routed", b"s", b"1" * 16, ("alpha",), ((),)),
        ("forward_run", [b"a1", b"a1"], b"tok-s"),
    ]
    proto.route_run(b"s", Run([b"5" * 16], recipient="alpha"), 0.1)
    assert io.take() == [("forward_run", [b"a1"], b"tok-s")]  # named: nothing to tell
    proto.route_run(b"s", Run([b"3" * 16], type="nobody.Do"), 0.1)
    assert [a[0] for a in io.take()] == ["no_route"]


def test_strangers_are_refused() -> None:
    proto, _ = hub()
    calls: list[Callable[[], None]] = [
        lambda: proto.begin(b"x", b"1" * 16, 0.0),
        lambda: proto.heard(b"x", 0.0),
        lambda: proto.acks(b"x", [], 0.0),
    ]
    for call in calls:
        with pytest.raises(RemoteProtocolError) as info:
            call()
        assert info.value.code == NOT_REGISTERED


def test_acks_go_to_registered_senders_only_and_free_credit() -> None:
    proto, io = hub()
    proto.route(b"s", Item(b"1" * 16), 0.1)
    io.take()
    assert proto.routing.in_flight(b"a1") == 1
    group = Group(b"tok-s", [b"1" * 16], [b"full"])  # to the token it got the message with
    proto.acks(b"a1", [group, Group(b"tok-gone", [b"2" * 16])], 0.2)
    assert io.take() == [("acks", b"s", [b"1" * 16], [b"full"], b"tok-a1")]
    assert proto.routing.in_flight(b"a1") == 0
    assert proto.stats.acks_forwarded == 2


def test_a_silent_peer_is_forgotten_and_no_longer_routed_to() -> None:
    proto, io = hub()
    for t in (0.6, 1.1, 1.6, 2.1, 2.6):
        proto.heard(b"b1", t)
        proto.heard(b"s", t)
        proto.tick(t)
    proto.tick(3.0)
    assert ("forgotten", b"a1", "silent for 3.0 s") in io.take()
    assert proto.stats.dead_peers >= 1
    proto.route(b"s", Item(b"1" * 16), 5.0)
    assert io.take()[0][0] == "no_route"


def _two_alphas(stall_limit: float = 60.0) -> tuple[HubProtocol[Item, Run, bytes], Recorder]:
    """Two instances of alpha (a1, a2) and a sender, all connected; heartbeats 1 s."""
    io = Recorder(up={b"a1", b"a2", b"s"})
    proto: HubProtocol[Item, Run, bytes] = HubProtocol(
        io, heartbeat=1.0, misses=3, grace=0.0, stall_limit=stall_limit
    )
    proto.start(0.0)
    for peer in (b"a1", b"a2"):
        ident = Identity("alpha", peer.decode())
        proto.hello(peer, ident, b"tok-" + peer, ["alpha.Do"], [], 100, 0, 0.0)
    proto.hello(b"s", Identity("sender", "s"), b"tok-s", [], [], 100, 0, 0.0)
    io.take()
    return proto, io


def _ids_for(proto: HubProtocol[Item, Run, bytes], peer: bytes, n: int) -> list[bytes]:
    """``n`` message ids whose first attempt the table sends to ``peer`` (all live)."""
    ids = []
    for i in range(1000):
        msg_id = i.to_bytes(16, "big")
        table = RoutingTable()
        for inst in proto.routing.instances():
            table.register(inst.peer, inst.identity, inst.commands, [], 100, 0.0)
        if table.route_command("alpha.Do", msg_id, None, 0.0) == peer:
            ids.append(msg_id)
            if len(ids) == n:
                return ids
    raise AssertionError("no ids found")


def _silence(proto: HubProtocol[Item, Run, bytes], quiet: bytes, until: float) -> None:
    """Everyone but ``quiet`` speaks every half second up to ``until``, ticking."""
    t = 0.5
    while t <= until:
        for peer in (b"a1", b"a2", b"s"):
            if peer != quiet and proto.registered(peer):
                proto.heard(peer, t)
        proto.tick(t)
        t += 0.5


def test_a_silent_peer_whose_connection_is_up_is_stalled_not_dead() -> None:
    proto, io = _two_alphas()
    mine, theirs = _ids_for(proto, b"a1", 3), _ids_for(proto, b"a2", 1)
    proto.route(b"s", Item(mine[0]), 0.1)  # a1 takes it, then stalls
    _silence(proto, b"a1", 3.0)
    actions = io.take()
    assert ("connected?", b"a1") in actions
    assert ("stalled", b"a1", 3.0) in actions
    assert not [a for a in actions if a[0] == "forgotten"]
    assert proto.registered(b"a1")
    assert proto.stalled_peers() == {b"a1": 0.0}
    assert (proto.stats.stalled, proto.stats.dead_peers) == (1, 0)
    # Its message's retry waits for it, held (never a second run elsewhere; forwarded,
    # it would only fill the stalled loop's socket) ...
    proto.route(b"s", Item(mine[0], attempt=2), 3.1)
    assert [a[0] for a in io.take() if a[0] != "routed"] == ["held"]
    # ... a retry it has no sticky entry for (a restarted hub's) goes to it: the
    # rendezvous choice made before must stand, or the handler may run twice ...
    proto.route(b"s", Item(mine[2], attempt=3), 3.1)
    # ... while a new message that would have gone to it goes to a2.
    proto.route(b"s", Item(mine[1]), 3.1)
    proto.route(b"s", Item(theirs[0]), 3.1)
    assert [a[1] for a in io.take() if a[0] == "forward"] == [b"a1", b"a2", b"a2"]
    # Checked again every 3 s, logged once.
    _silence(proto, b"a1", 12.0)
    assert [a[0] for a in io.take() if a[0] in ("stalled", "forgotten")] == []
    # It speaks again: live, the retry held for it goes to it, and new messages may
    # go to it again.
    proto.heard(b"a1", 12.2)
    assert [a[:3] for a in io.take()] == [("resumed", b"a1", 12.2), ("forward", b"a1", mine[0])]
    proto.route(b"s", Item(_ids_for(proto, b"a1", 3)[2]), 12.3)
    assert io.take()[0][:2] == ("forward", b"a1")
    assert proto.stalled_peers() == {}


def test_a_stalled_peer_whose_connection_drops_is_forgotten_at_its_next_check() -> None:
    proto, io = _two_alphas()
    _silence(proto, b"a1", 3.0)
    assert proto.stalled_peers() == {b"a1": 0.0}
    io.up.discard(b"a1")  # e.g. its process was stopped and libzmq's heartbeats lapsed
    _silence(proto, b"a1", 6.0)
    assert ("forgotten", b"a1", "silent for 6.0 s, and its connection dropped") in io.take()
    assert not proto.registered(b"a1")
    assert proto.stalled_peers() == {}
    assert proto.stats.dead_peers == 1


def test_a_silent_peer_whose_connection_is_gone_is_forgotten_as_before() -> None:
    proto, io = _two_alphas()
    io.up.discard(b"a1")
    _silence(proto, b"a1", 3.0)
    actions = io.take()
    assert ("forgotten", b"a1", "silent for 3.0 s") in actions
    assert not [a for a in actions if a[0] == "stalled"]


def test_a_peer_stalled_beyond_the_stall_limit_is_forgotten() -> None:
    proto, io = _two_alphas(stall_limit=10.0)
    _silence(proto, b"a1", 12.0)
    forgotten = [a for a in io.take() if a[0] == "forgotten"]
    assert forgotten == [  # told: its connection is up, it says HELLO when it can
        ("forgotten", b"a1", "silent for 12.0 s, connected but stalled beyond stall_limit", "told")
    ]
    assert proto.stats.stalled == 1
    assert proto.stats.dead_peers == 1


def test_a_stalled_peer_saying_hello_again_is_live() -> None:
    proto, io = _two_alphas()
    _silence(proto, b"a1", 3.0)
    io.take()
    proto.hello(b"a1", Identity("alpha", "a1"), b"tok-a1", ["alpha.Do"], [], 100, 0, 3.5)
    assert ("resumed", b"a1", 3.5) in io.take()
    assert proto.stalled_peers() == {}


def test_bye_forgets_at_once() -> None:
    proto, io = hub()
    proto.forget(b"a1", "said bye")
    assert io.take() == [("forgotten", b"a1", "said bye")]
    assert not proto.registered(b"a1")


def test_a_hello_reusing_a_live_instances_identity_is_refused() -> None:
    proto, io = _two_alphas()
    with pytest.raises(RemoteProtocolError) as info:  # another connection, same instance
        proto.hello(b"evil", Identity("alpha", "a1"), b"tok-a1", ["alpha.Do"], [], 9, 0, 0.5)
    assert info.value.code == IN_USE
    assert io.take() == [("connected?", b"a1")]
    assert proto.registered(b"a1")
    assert not proto.registered(b"evil")
    assert proto.routing.instance(b"a1") is not None
    # Its acks still come back to it, not to the impostor.
    proto.acks(b"a2", [Group(b"tok-a1", [b"1" * 16])], 0.6)
    assert io.take() == [("acks", b"a1", [b"1" * 16], [], b"tok-a2")]


def test_an_instance_whose_connection_is_gone_is_taken_over_and_the_old_one_told() -> None:
    proto, io = _two_alphas()
    io.up.discard(b"a1")  # e.g. it restarted: its old connection is gone
    proto.hello(b"a1-new", Identity("alpha", "a1"), b"tok-a1", ["alpha.Do"], [], 9, 0, 0.5)
    actions = io.take()
    assert ("forgotten", b"a1", "displaced by a new connection of alpha/a1", "told") in actions
    assert actions[-1] == ("welcome", b"a1-new", 1000)
    assert not proto.registered(b"a1")
    assert proto.registered(b"a1-new")
    proto.acks(b"a2", [Group(b"tok-a1", [b"1" * 16])], 0.6)
    assert io.take() == [("acks", b"a1-new", [b"1" * 16], [], b"tok-a2")]


def test_the_same_key_takes_a_live_instance_over() -> None:
    proto, io = _two_alphas()
    proto.keys[b"a1"] = "alpha-key"  # registered with this CURVE key
    proto.hello(
        b"a1-new", Identity("alpha", "a1"), b"tok-a1", ["alpha.Do"], [], 9, 0, 0.5, key="alpha-key"
    )
    assert ("forgotten", b"a1", "displaced by a new connection of alpha/a1", "told") in io.take()
    assert proto.registered(b"a1-new")
    assert not proto.registered(b"a1")


def test_instances_are_counted_per_key_and_a_takeover_adds_none() -> None:
    proto, io = hub()
    proto.hello(b"p1", Identity("alpha", "a1"), b"tok-a1", [], [], 9, 0, 0.1, key="k")
    proto.hello(b"p2", Identity("alpha", "a2"), b"tok-a2", [], [], 9, 0, 0.1, key="k")
    proto.hello(b"p3", Identity("beta", "b1"), b"tok-b1", [], [], 9, 0, 0.1, key="other")
    assert (proto.instances_of("k"), proto.instances_of("other")) == (2, 1)
    assert not proto.adds_instance(b"p1", b"tok-a1", "k")  # a HELLO again
    assert not proto.adds_instance(b"p9", b"tok-a1", "k")  # a same-key takeover
    assert proto.adds_instance(b"p9", b"tok-a9", "k")
    assert proto.adds_instance(b"p9", b"tok-a1", "other")  # (refused IN_USE anyway)
    proto.hello(b"p9", Identity("alpha", "a1"), b"tok-a1", [], [], 9, 0, 0.2, key="k")
    assert proto.instances_of("k") == 2
    proto.forget(b"p2", "said bye")
    proto.forget(b"p9", "said bye")
    assert proto.instances_of("k") == 0
    assert "k" not in proto._per_key
    io.take()


def test_nobody_registers_under_the_hubs_own_name() -> None:
    proto, _io = _two_alphas()
    proto.identity = Identity("hub", "h1")
    with pytest.raises(RemoteProtocolError) as info:
        proto.hello(b"x", Identity("hub", "other"), b"tok-x", [], [], 9, 0, 0.5)
    assert info.value.code == IN_USE
    assert not proto.registered(b"x")


def test_a_hub_that_lost_every_peer_to_silence_rejoins_routing_nothing_for_a_grace() -> None:
    # A hub cut off from everyone (its host partitioned) forgets every peer; while it
    # was away other hubs routed what it did not see, and what reaches it now may have
    # been sent before the cut: for a grace period from the first HELLO back, nothing is
    # routed, first attempts included (unlike after a restart), until all are back.
    proto, io = hub(grace=2.0)
    for step in range(1, 21):  # nobody heard for 10 s: all forgotten (none connected)
        proto.tick(step / 2)
    assert proto.peer_count == 0
    io.take()
    proto.hello(b"a1", Identity("alpha", "a1"), b"tok-a1", ["alpha.Do"], [], 100, 500, 11.0)
    proto.hello(b"s", Identity("sender", "s"), b"tok-s", [], [], 100, 500, 11.0)
    io.take()
    proto.route(b"s", Item(b"1" * 16), 11.5)
    proto.route(b"s", Item(b"2" * 16, attempt=2), 11.5)
    proto.route_run(b"s", Run([b"4" * 16]), 11.5)
    proto.heard(b"a1", 12.5)
    proto.heard(b"s", 12.5)
    proto.route(b"s", Item(b"3" * 16, attempt=2), 13.5)
    assert [a[:3] for a in io.take()] == [
        ("retry_later", b"s", b"1" * 16),
        ("retry_later", b"s", b"2" * 16),
        ("retry_later", b"s", b"4" * 16),
        ("routed", b"s", b"3" * 16),
        ("forward", b"a1", b"3" * 16),
    ]


def test_a_hub_that_heard_nobody_for_two_intervals_was_cut_off_itself() -> None:
    # Nothing heard from any peer for more than two intervals, connections up (a
    # partition shorter than their timeout): the first input clears every stall mark,
    # which would steer first attempts away from instances other hubs chose, and the
    # hub rejoins as above.
    proto, io = _two_alphas()
    proto.grace = 2.0
    for step in range(1, 8):  # nobody heard: all three stalled by 3.5 s
        proto.tick(step / 2)
    assert set(proto.stalled_peers()) == {b"a1", b"a2", b"s"}
    io.take()
    proto.heard(b"a1", 4.0)
    assert proto.stalled_peers() == {}
    assert ("resumed", b"a2", 4.0) in [a[:3] for a in io.take()]
    proto.route(b"s", Item(b"1" * 16), 4.1)
    assert io.take() == [("retry_later", b"s", b"1" * 16, 1.9)]
    proto.route(b"s", Item(b"1" * 16), 6.0)
    assert [a[0] for a in io.take()] == ["routed", "forward"]


def test_peers_leaving_by_bye_do_not_start_a_grace_period() -> None:
    proto, io = hub(grace=2.0)
    proto.tick(2.5)
    for peer in (b"a1", b"b1", b"s"):
        proto.forget(peer, "said bye")
    proto.hello(b"a1", Identity("alpha", "a1"), b"tok-a1", ["alpha.Do"], [], 100, 500, 3.0)
    proto.hello(b"s", Identity("sender", "s"), b"tok-s", [], [], 100, 500, 3.0)
    io.take()
    proto.route(b"s", Item(b"2" * 16, attempt=2), 3.1)
    assert [a[:3] for a in io.take()] == [
        ("routed", b"s", b"2" * 16),
        ("forward", b"a1", b"2" * 16),
    ]
