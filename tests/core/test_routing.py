"""The hub's routing table: who gets a command or an event, stickiness, credit."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from ackbus import Identity
from ackbus.core import RoutingTable
from ackbus.core.routing import FULL


def table(credit: int = 100, **kw: float) -> RoutingTable:
    t = RoutingTable(**kw)  # type: ignore[arg-type]
    for i in range(3):
        t.register(
            f"t{i}".encode(),
            Identity("table", str(i)),
            ["poker.StartHand"],
            ["poker.Tick"],
            credit,
            0.0,
        )
    t.register(b"l0", Identity("ledger", "0"), ["poker.Charge"], ["poker.Tick"], credit, 0.0)
    return t


def ids(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


def test_a_command_goes_to_an_instance_of_the_service_handling_it() -> None:
    t = table()
    assert t.route_command("poker.Charge", b"m", None, 0.0) == b"l0"
    assert t.route_command("poker.StartHand", b"m", None, 0.0) in (b"t0", b"t1", b"t2")
    assert t.route_command("poker.StartHand", b"n", "table", 0.0) in (b"t0", b"t1", b"t2")


def test_no_route_says_why() -> None:
    t = table()
    assert t.route_command("poker.Fold", b"m", None, 0.0) is None
    assert t.no_route_reason("poker.Fold", None) == "no live service handles poker.Fold"
    assert t.route_command("poker.Charge", b"m", "table", 0.0) is None
    assert "no live instance of service 'table' handles poker.Charge" in t.no_route_reason(
        "poker.Charge", "table"
    )
    assert t.route_event("poker.Nothing", b"e", 0.0) == []


def test_several_services_for_one_command_type_need_a_recipient() -> None:
    t = table()
    t.register(b"x", Identity("audit", "0"), ["poker.Charge"], [], 10, 0.0)
    assert t.route_command("poker.Charge", b"m", None, 0.0) is None
    reason = t.no_route_reason("poker.Charge", None)
    assert reason.startswith("ambiguous: services audit, ledger all handle poker.Charge")
    assert t.route_command("poker.Charge", b"m", "audit", 0.0) == b"x"
    assert t.route_command("poker.Charge", b"m2", "ledger", 0.0) == b"l0"


def test_load_spreads_over_instances() -> None:
    t = table(credit=10_000)
    counts = Counter(t.route_command("poker.StartHand", m, None, 0.0) for m in ids(3000))
    assert set(counts) == {b"t0", b"t1", b"t2"}
    assert min(counts.values()) > 850  # ~1000 each


def test_a_retry_goes_back_to_the_same_instance() -> None:
    t = table()
    for m in ids(50):
        first = t.route_command("poker.StartHand", m, None, 0.0)
        assert all(t.route_command("poker.StartHand", m, None, 1.0) == first for _ in range(3))


def test_stickiness_survives_a_hub_restart_with_the_same_instances() -> None:
    """The choice is rendezvous hashing of (message, instance identity): a fresh table (a
    restarted hub, or a second hub) picks the same instance, whatever the register order."""
    before = table()
    choices = {m: before.route_command("poker.StartHand", m, None, 0.0) for m in ids(200)}
    after = RoutingTable()
    for i in (2, 0, 1):
        after.register(
            f"t{i}".encode(), Identity("table", str(i)), ["poker.StartHand"], [], 100, 5.0
        )
    assert {m: after.route_command("poker.StartHand", m, None, 5.0) for m in choices} == choices


def test_reconnect_under_a_new_address_keeps_stickiness() -> None:
    t = table()
    m = ids(1)[0]
    first = t.route_command("poker.StartHand", m, None, 0.0)
    assert first is not None
    index = first.decode()[1]
    t.register(b"new", Identity("table", index), ["poker.StartHand"], [], 100, 1.0)
    assert t.instance(first) is None
    assert t.route_command("poker.StartHand", m, None, 2.0) == b"new"


def test_a_dead_instance_leaves_and_its_messages_move() -> None:
    t = table()
    m = ids(1)[0]
    first = t.route_command("poker.StartHand", m, None, 0.0)
    assert first is not None
    removed = t.unregister(first)
    assert removed is not None
    assert removed.identity.service == "table"
    assert t.unregister(first) is None
    second = t.route_command("poker.StartHand", m, None, 1.0)
    assert second not in (None, first)
    # Even when it comes back, the retry stays with the instance that got it last.
    t.register(first, removed.identity, removed.commands, removed.events, 100, 2.0)
    assert t.route_command("poker.StartHand", m, None, 3.0) == second
    assert len(t.instances()) == 4


def test_a_full_instance_is_skipped_while_another_has_room() -> None:
    t = table(credit=2)
    routed = [t.route_command("poker.StartHand", m, None, 0.0) for m in ids(6)]
    assert Counter(routed) == {b"t0": 2, b"t1": 2, b"t2": 2}
    # All full: a hard limit; the hub holds it (FULL), nothing is taken.
    assert t.route_command("poker.StartHand", b"extra", None, 0.0) == FULL
    assert sum(t.in_flight(p) for p in (b"t0", b"t1", b"t2")) == 6
    # An ack frees a credit, once, however often it is repeated.
    m0 = ids(6)[0]
    t.on_ack(routed[0] or b"", m0)
    t.on_ack(routed[0] or b"", m0)
    assert sum(t.in_flight(p) for p in (b"t0", b"t1", b"t2")) == 5
    assert t.route_command("poker.StartHand", b"extra", None, 0.0) == routed[0]


def test_credit_comes_back_when_acks_are_lost() -> None:
    t = table(credit=10, sticky_ttl=10.0)
    for m in ids(20):
        t.route_command("poker.StartHand", m, None, 0.0)
    assert sum(t.in_flight(p) for p in (b"t0", b"t1", b"t2")) == 20
    t.tick(10.0)
    assert sum(t.in_flight(p) for p in (b"t0", b"t1", b"t2")) == 0
    assert t.sticky_count() == 0


def test_routing_alone_expires_old_sticky_entries_without_a_tick() -> None:
    t = table(credit=100, sticky_ttl=10.0)
    old, new = ids(6)[:3], ids(6)[3:]
    for m in old:
        t.route_command("poker.StartHand", m, None, 0.0)
    for n, m in enumerate(new):  # the first at t=10 expires the three from t=0
        t.route_command("poker.StartHand", m, None, 10.0 + n)
    assert t.sticky_count() == 3
    assert sum(t.in_flight(p) for p in (b"t0", b"t1", b"t2")) == 3
    t.tick(19.9)  # nothing of the newer three is due yet: the next expiry is at 20
    assert t.sticky_count() == 3
    t.tick(22.0)
    assert t.sticky_count() == 0


def test_ack_without_a_message_id_frees_one_credit() -> None:
    t = table()
    peer = t.route_command("poker.Charge", b"m", None, 0.0)
    assert peer == b"l0"
    assert t.in_flight(b"l0") == 1
    t.on_ack(b"l0")
    t.on_ack(b"l0")
    assert t.in_flight(b"l0") == 0


def test_sticky_map_is_bounded() -> None:
    t = table(sticky_capacity=100)
    for n, m in enumerate(ids(1000)):
        t.route_command("poker.StartHand", m, None, n * 0.001)
    assert t.sticky_count() == 100


def test_an_event_goes_to_one_instance_of_every_subscribing_service() -> None:
    t = table()
    pairs = t.route_event("poker.Tick", b"e", 0.0)
    assert [s for s, _ in pairs] == ["table", "ledger"]
    assert dict(pairs)["ledger"] == b"l0"
    assert t.route_event("poker.Tick", b"e", 1.0) == pairs  # sticky per service
    t.unregister(b"l0")
    assert [s for s, _ in t.route_event("poker.Tick", b"e", 2.0)] == ["table"]


@pytest.mark.parametrize("seed", range(30))
def test_on_acks_pays_credit_back_exactly_as_one_on_ack_per_id(seed: int) -> None:
    """The batch call a hub uses for ACK groups agrees with :meth:`on_ack` per id, for
    commands and events, repeated and unknown ids, and acks from any peer."""
    rng = random.Random(seed)
    one, many = table(credit=3), table(credit=3)
    sent = ids(40, seed)
    for n, m in enumerate(sent):
        for t in (one, many):
            if n % 4 == 0:
                t.route_event("poker.Tick", m, n * 0.01)
            else:
                t.route_command("poker.StartHand", m, None, n * 0.01)
    peers = [b"t0", b"t1", b"t2", b"l0", b"gone"]
    for _ in range(8):
        peer = rng.choice(peers)
        group = [rng.choice(sent) for _ in range(rng.randrange(12))] + ids(2, seed + 99)
        for m in group:
            one.on_ack(peer, m)
        many.on_acks(peer, group)
        assert [one.in_flight(p) for p in peers] == [many.in_flight(p) for p in peers]
        assert one.sticky_count() == many.sticky_count()
    # and the tables still route alike afterwards
    for m in ids(10, seed + 7):
        assert one.route_command("poker.StartHand", m, None, 1.0) == many.route_command(
            "poker.StartHand", m, None, 1.0
        )


def state(t: RoutingTable) -> object:
    """Everything routing decides by: sticky entries in order, credit counts (those of
    instances that left too) and the expiry bound. Read from the inside on purpose: the
    batch call must leave the table exactly as the calls it replaces."""
    return list(t._sticky.items()), dict(t._in_flight), t._expires_at


@pytest.mark.parametrize("seed", range(60))
def test_route_commands_routes_exactly_as_route_command_per_id(seed: int) -> None:
    """The batch call a hub uses for a run of commands agrees with :meth:`route_command`
    per id: choices, sticky entries, credit and expiry, with one instance or several,
    full credit, a small full table, short TTLs, retries and repeated ids in a batch,
    recipients, no route, acks (one by one against :meth:`on_acks`), instances leaving
    (their credit still owed) and coming back under a new address."""
    rng = random.Random(seed)
    kw = {"sticky_capacity": rng.choice([4, 15, 1000]), "sticky_ttl": rng.choice([0.3, 2.0, 60.0])}
    one, many = RoutingTable(**kw), RoutingTable(**kw)  # type: ignore[arg-type]
    members = [("table", "0"), ("table", "1"), ("table", "2"), ("ledger", "0")]
    peer_of = {m: f"{m[0]}-{m[1]}-0".encode() for m in members}
    credit = rng.choice([1, 3, 100])

    def register(member: tuple[str, str], now: float) -> None:
        commands = ["poker.Charge"] if member[0] == "ledger" else ["poker.StartHand"]
        commands.append("poker.Both")
        for t in (one, many):
            t.register(peer_of[member], Identity(*member), commands, [], credit, now)

    for member in members[: rng.randint(1, 4)]:
        register(member, 0.0)
    pool = ids(25, seed)
    now = 0.0
    for _ in range(80):
        now += rng.choice([0.0, 0.0, 0.05, 0.4])
        op = rng.random()
        if op < 0.55:
            batch = [rng.choice(pool) for _ in range(rng.randint(1, 8))]
            msg_type = rng.choice(["poker.StartHand", "poker.Charge", "poker.Both", "x.None"])
            recipient = rng.choice([None, None, "table", "ledger", "ghost"])
            expected = [one.route_command(msg_type, m, recipient, now) for m in batch]
            got = many.route_commands(msg_type, batch, recipient, now)
            assert got == (None if expected[0] is None else expected)
        elif op < 0.75:
            peer = rng.choice([*peer_of.values(), b"gone"])
            acked = [rng.choice(pool) for _ in range(rng.randint(1, 10))]
            if rng.random() < 0.3:  # everything at once: what an instance that left owed
                acked = rng.sample(pool, len(pool))
            for m in acked:
                one.on_ack(peer, m)
            many.on_acks(peer, acked)
        elif op < 0.8:
            peer = rng.choice(list(peer_of.values()))
            for t in (one, many):
                t.on_ack(peer)  # an ack without an id: credit back, no sticky change
        elif op < 0.88:
            leaving = peer_of[rng.choice(members)]
            for t in (one, many):
                t.unregister(leaving)
        elif op < 0.95:
            member = rng.choice(members)
            if rng.random() < 0.5:  # came back under a new address
                peer_of[member] = peer_of[member][:-1] + bytes([peer_of[member][-1] + 1])
            register(member, now)
        else:
            for t in (one, many):
                t.tick(now)
        assert state(many) == state(one)


def test_credit_owed_by_an_instance_that_left_is_paid_back_in_one_group() -> None:
    """Acks for everything an instance that left still had: the count goes entirely,
    in one :meth:`on_acks` as with one :meth:`on_ack` per id."""
    one, many = table(), table()
    sent = ids(5)
    for t in (one, many):
        assert t.route_commands("poker.Charge", sent, None, 0.0) == [b"l0"] * 5
        t.unregister(b"l0")
    for m in sent:
        one.on_ack(b"t0", m)
    many.on_acks(b"t0", sent)
    assert state(many) == state(one)
    assert b"ledger/0" not in state(one)[1]  # type: ignore[index]


def test_a_stalled_instance_gets_a_first_attempt_only_when_all_with_room_are_stalled() -> None:
    t = table(credit=1)
    t.set_stalled(b"t0", True)
    t.set_stalled(b"t1", True)
    assert t.route_command("poker.StartHand", b"a", None, 0.0) == b"t2"
    # t2 is full: a stalled instance with room is better than holding the message
    second = t.route_command("poker.StartHand", b"b", None, 0.0)
    third = t.route_command("poker.StartHand", b"c", None, 0.0)
    assert {second, third} == {b"t0", b"t1"}
    assert t.route_command("poker.StartHand", b"d", None, 0.0) == FULL  # none has room
    t.set_stalled(b"t0", False)
    assert t.route_command("poker.StartHand", b"d", None, 0.0) == FULL  # room, not stall


def test_a_retry_without_a_sticky_entry_ignores_stalls() -> None:
    # A restarted hub has no sticky entry: the retry must reach the instance the first
    # attempt's rendezvous choice named, stalled or not, or the handler may run twice.
    for msg_id in ids(20, seed=3):
        expected = table().route_command("poker.StartHand", msg_id, None, 0.0)
        assert expected is not None
        assert expected != FULL
        t = table()
        t.set_stalled(expected, True)
        assert t.route_command("poker.StartHand", msg_id, None, 0.0, first=False) == expected
        t = table()
        t.set_stalled(expected, True)
        assert t.route_command("poker.StartHand", msg_id, None, 0.0) != expected
