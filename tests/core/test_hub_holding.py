"""The hub's hard limit: an instance is sent at most its ``max_concurrency`` unanswered
messages; the rest wait in the hub's hold queues (``ackbus.core.holding``), by priority
with aging, and go out as answers free slots."""

from __future__ import annotations

from ackbus import Identity
from ackbus.core.hub_protocol import HubProtocol
from ackbus.core.priority import PRIORITY_STEP

from .test_hub_protocol import Group, Item, Recorder, Run

Hub = HubProtocol[Item, Run, bytes]


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def hub(*limits: int, max_held: int = 100) -> tuple[Hub, Recorder]:
    """Instances a1, a2, ... of service alpha with these limits, and a sender s."""
    io = Recorder()
    proto: Hub = HubProtocol(io, heartbeat=1.0, misses=3, grace=0.0, max_held=max_held)
    proto.start(0.0)
    for n, limit in enumerate(limits, 1):
        peer = f"a{n}".encode()
        ident = Identity("alpha", peer.decode())
        proto.hello(peer, ident, b"tok-" + peer, ["alpha.Do"], ["ev.Tick"], limit, 500, 0.0)
    proto.hello(b"s", Identity("sender", "s"), b"tok-s", [], [], 0, 500, 0.0)
    io.take()
    return proto, io


def kinds(actions: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return [a[:3] for a in actions if a[0] in ("forward", "held", "retry_later", "no_route")]


def test_a_full_instance_gets_nothing_more_and_held_messages_go_out_as_answers_free_slots() -> None:
    proto, io = hub(2)
    for n in range(5):
        proto.route(b"s", Item(mid(n)), 0.1)
    assert kinds(io.take()) == [
        ("forward", b"a1", mid(0)),
        ("forward", b"a1", mid(1)),
        ("held", b"s", mid(2)),
        ("held", b"s", mid(3)),
        ("held", b"s", mid(4)),
    ]
    assert proto.routing.in_flight(b"a1") == 2
    assert (proto.stats.held, len(proto.holds)) == (3, 3)
    # An IN_PROGRESS notice frees nothing; an OK ack and a full answer (a rejection) do.
    proto.acks(b"a1", [Group(b"tok-s", [], [b"~" + mid(0)])], 0.2)
    assert kinds(io.take()) == []
    proto.acks(b"a1", [Group(b"tok-s", [mid(0)], [mid(1)])], 0.3)
    assert kinds(io.take()) == [("forward", b"a1", mid(2)), ("forward", b"a1", mid(3))]
    assert proto.routing.in_flight(b"a1") == 2
    # A repeated answer pays back nothing twice.
    proto.acks(b"a1", [Group(b"tok-s", [mid(0)], [mid(1)])], 0.4)
    assert kinds(io.take()) == []
    assert proto.routing.in_flight(b"a1") == 2
    proto.acks(b"a1", [Group(b"tok-s", [mid(2), mid(3)])], 0.5)
    assert kinds(io.take()) == [("forward", b"a1", mid(4))]
    assert len(proto.holds) == 0
    assert proto.routing.in_flight(b"a1") == 1


def test_whichever_instance_frees_first_takes_the_next_held_message() -> None:
    proto, io = hub(1, 1)
    for n in range(4):
        proto.route(b"s", Item(mid(n)), 0.1)
    first = {a[1]: a[2] for a in io.take() if a[0] == "forward"}
    assert set(first) == {b"a1", b"a2"}
    proto.acks(b"a2", [Group(b"tok-s", [first[b"a2"]])], 0.2)
    (fwd,) = kinds(io.take())
    assert fwd[:2] == ("forward", b"a2")


def test_held_messages_go_by_priority_with_aging() -> None:
    proto, io = hub(1)
    proto.route(b"s", Item(mid(0)), 0.0)  # runs
    for n in range(1, 4):
        proto.route(b"s", Item(mid(n)), 0.0)  # priority 0, at 0.0
    proto.route(b"s", Item(mid(9), priority=9), 0.5)  # 9 levels = 0.9 s: ahead of them
    # A priority 9 that comes more than 0.9 s after a priority 0 goes behind it (aging).
    proto.route(b"s", Item(mid(8), priority=9), 0.0 + 9 * PRIORITY_STEP + 0.2)
    io.take()
    order = []
    for n in range(6):
        last = order[-1] if order else mid(0)
        proto.acks(b"a1", [Group(b"tok-s", [last])], 1.0 + n)
        order += [a[2] for a in io.take() if a[0] == "forward"]
    assert order == [mid(9), mid(1), mid(2), mid(3), mid(8)]


def test_a_retry_of_a_held_message_is_held_once_and_told_again() -> None:
    proto, io = hub(1)
    proto.route(b"s", Item(mid(0)), 0.0)
    proto.route(b"s", Item(mid(1)), 0.0)
    proto.route(b"s", Item(mid(1), attempt=2), 1.0)
    assert kinds(io.take())[1:] == [("held", b"s", mid(1)), ("held", b"s", mid(1))]
    assert (proto.stats.held, len(proto.holds)) == (1, 1)
    proto.acks(b"a1", [Group(b"tok-s", [mid(0)])], 1.1)
    assert kinds(io.take()) == [("forward", b"a1", mid(1))]
    assert len(proto.holds) == 0


def test_the_hub_repeats_the_held_notice_every_heartbeat() -> None:
    proto, io = hub(1)
    proto.route(b"s", Item(mid(0)), 0.0)
    proto.route(b"s", Item(mid(1)), 0.0)
    io.take()
    assert proto.hold_lease == 3.0
    deadline = proto.next_deadline()
    assert deadline is not None
    assert deadline <= 1.0
    proto.tick(1.0)
    assert ("held", b"s", mid(1), 1) in io.take()


def test_a_full_hold_queue_answers_retry_later_deferred() -> None:
    proto, io = hub(1, max_held=2)
    for n in range(4):
        proto.route(b"s", Item(mid(n)), 0.0)
    assert kinds(io.take())[-1] == ("retry_later", b"s", mid(3))
    assert (proto.stats.overflow, len(proto.holds)) == (1, 2)


def retry_held_for_its_instance(proto: Hub, io: Recorder) -> tuple[bytes, bytes]:
    """Two instances of limit 1 busy; mid(0) answered (a transient rejection) and its
    slot taken by another message; then mid(0)'s retry: held for its own instance.
    Returns (its instance, the other one)."""
    proto.route(b"s", Item(mid(0)), 0.0)
    proto.route(b"s", Item(mid(1)), 0.0)
    where = {a[2]: a[1] for a in io.take() if a[0] == "forward"}
    own, other = where[mid(0)], where[mid(1)]
    proto.acks(own, [Group(b"tok-s", [], [mid(0)])], 0.1)
    proto.route(b"s", Item(mid(5)), 0.1)
    assert kinds(io.take())[0][:2] == ("forward", own)
    proto.route(b"s", Item(mid(0), attempt=2), 0.2)
    assert kinds(io.take()) == [("held", b"s", mid(0))]
    return own, other


def test_a_sticky_retry_waits_for_its_own_instance() -> None:
    proto, io = hub(1, 1)
    own, other = retry_held_for_its_instance(proto, io)
    # The other instance frees first: the retry still waits for its own.
    proto.acks(other, [Group(b"tok-s", [mid(1)])], 0.3)
    assert kinds(io.take()) == []
    proto.acks(own, [Group(b"tok-s", [mid(5)])], 0.4)
    assert kinds(io.take()) == [("forward", own, mid(0))]


def test_an_instance_that_leaves_hands_its_held_retries_to_the_service() -> None:
    proto, io = hub(1, 1)
    own, other = retry_held_for_its_instance(proto, io)
    proto.forget(own, "said bye")
    proto.acks(other, [Group(b"tok-s", [mid(1)])], 0.3)
    assert kinds(io.take()) == [("forward", other, mid(0))]


def test_held_messages_no_instance_can_take_any_more_are_answered_no_route() -> None:
    proto, io = hub(1)
    proto.route(b"s", Item(mid(0)), 0.0)
    proto.route(b"s", Item(mid(1)), 0.0)
    io.take()
    proto.forget(b"a1", "said bye")
    assert kinds(io.take()) == [("no_route", b"s", mid(1))]
    assert len(proto.holds) == 0


def test_a_run_that_does_not_fit_is_routed_item_by_item() -> None:
    proto, io = hub(3)
    proto.route_run(b"s", Run([mid(n) for n in range(2)]), 0.0)
    assert io.take() == [
        ("routed", b"s", mid(0), ("alpha",), ((),)),  # the type's service, for its acks
        ("forward_run", [b"a1", b"a1"], b"tok-s"),
    ]
    proto.begin(b"s", mid(2), 0.0)
    proto.route_run(b"s", Run([mid(n) for n in range(2, 5)]), 0.0)
    assert kinds(io.take()) == [
        ("forward", b"a1", mid(2)),
        ("held", b"s", mid(3)),
        ("held", b"s", mid(4)),
    ]
    assert proto.routing.in_flight(b"a1") == 3


def test_an_event_waits_for_a_full_subscriber_and_its_notice_names_it() -> None:
    proto, io = hub(1)
    proto.route(b"s", Item(mid(0)), 0.0)
    io.take()
    proto.route(b"s", Item(mid(1), type="ev.Tick", kind=2), 0.0)
    actions = io.take()
    assert [a[:3] for a in actions] == [
        ("held", b"s", mid(1)),
        ("routed", b"s", mid(1)),
    ]
    assert actions[1][3] == ("alpha",)
    proto.acks(b"a1", [Group(b"tok-s", [mid(0)])], 0.1)
    assert kinds(io.take()) == [("forward", b"a1", mid(1))]
