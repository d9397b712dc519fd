"""Ordering keys beyond the sender's tracker (tests/core/test_tracker_keys.py): the wire
carries the key's hash, the hub sends a key's messages to one instance and holds them for
it when it is full, and a receiver runs one message of a key at a time, in arrival
order, whatever their priorities."""

from __future__ import annotations

import pytest
from ackbus import Identity, wire
from ackbus.core import RoutingTable
from ackbus.core.routing import FULL
from ackbus.errors import RemoteProtocolError

from .test_endpoint_admission import Item, mid, receive, receiver
from .test_hub_holding import hub as holding_hub
from .test_hub_holding import kinds
from .test_hub_protocol import Group
from .test_hub_protocol import Item as HubItem

# -- the wire ---------------------------------------------------------------------------


def keyed_frame(key: str, body: bytes = b"body", envelope: bytes = b"\x0a\x00") -> bytes:
    return wire.encode_message(
        b"k" * 16,
        "poker.PlayerAction",
        body,
        envelope=wire.keyed_envelope(wire.key_hash(key), envelope),
        flags=wire.FLAG_KEYED,
    )


def test_a_keyed_item_carries_its_key_hash_before_its_envelope() -> None:
    frame = keyed_frame("t1")
    item = wire.MessageItem(frame, b"")
    assert item.key == wire.key_hash("t1") == wire.item_key(frame) != 0
    assert (item.envelope_bytes, item.body) == (b"\x0a\x00", b"body")
    plain = wire.MessageItem(wire.encode_message(b"p" * 16, "poker.PlayerAction", b"x"), b"")
    assert plain.key == 0
    assert wire.item_key(plain.frame) == 0


def test_key_hashes_are_stable_and_equal_for_a_number_and_its_digits() -> None:
    assert wire.key_hash("table-7") == wire.key_hash(b"table-7")
    assert wire.key_hash(7) == wire.key_hash("7") != wire.key_hash("table-7")
    # BLAKE2b, pinned: the hub and every sender must agree across versions.
    assert wire.key_hash("t1") == 3012898748006197707


@pytest.mark.parametrize("elen", [0, 5])
def test_a_keyed_item_without_room_for_its_key_is_malformed(elen: int) -> None:
    frame = wire.encode_message(
        b"k" * 16, "a.B", b"", envelope=b"\x01" * elen, flags=wire.FLAG_KEYED
    )
    with pytest.raises(RemoteProtocolError, match="no room for its key"):
        wire.MessageItem(frame, b"")


def test_keyed_items_never_join_a_packed_run() -> None:
    plain = [wire.encode_message(bytes([i]) * 16, "a.B", b"x") for i in range(3)]
    keyed = keyed_frame("t1")
    frames = wire.message_frames([(b"", [plain[0], plain[1], keyed, plain[2]])])
    scanned = wire.scan_messages(frames)
    kinds = [type(x).__name__ for x in scanned]
    assert kinds == ["PackedRun", "MessageItem", "PackedRun"]
    assert scanned[1].key == wire.key_hash("t1")  # type: ignore[union-attr]


# -- the routing table ------------------------------------------------------------------


def table(n: int, limit: int = 10) -> RoutingTable:
    t = RoutingTable()
    for i in range(n):
        t.register(f"p{i}".encode(), Identity("svc", str(i)), ["T"], [], limit, 0.0)
    return t


def test_a_key_goes_to_one_instance_and_keys_spread() -> None:
    t = table(3, limit=10_000)
    homes = {}
    for k in range(1, 301):
        peers = {t.route_command("T", mid(k * 1000 + j), None, 0.0, key=k) for j in range(5)}
        assert len(peers) == 1
        homes[k] = peers.pop()
    assert {p: sum(1 for v in homes.values() if v == p) > 60 for p in set(homes.values())} == {
        b"p0": True,
        b"p1": True,
        b"p2": True,
    }


def test_a_key_moves_only_when_its_instance_is_gone() -> None:
    t = table(2, limit=10_000)
    home = {k: t.route_command("T", mid(k), None, 0.0, key=k) for k in range(1, 200)}
    t.register(b"p9", Identity("svc", "9"), ["T"], [], 10_000, 1.0)  # a new instance
    assert all(t.route_command("T", mid(k + 500), None, 1.0, key=k) == home[k] for k in home)
    t.unregister(b"p0")
    moved = {k: t.route_command("T", mid(k + 1000), None, 2.0, key=k) for k in home}
    assert all(moved[k] == home[k] for k in home if home[k] == b"p1")
    assert all(moved[k] in (b"p1", b"p9") for k in home if home[k] == b"p0")


def test_a_full_instance_holds_its_keys_messages_rather_than_divert_them() -> None:
    t = table(2, limit=1)
    first = t.route_command("T", mid(1), None, 0.0, key=42)
    assert first in (b"p0", b"p1")
    assert t.route_command("T", mid(2), None, 0.0, key=42) == FULL  # the other has room
    assert t.route_command("T", mid(3), None, 0.0) not in (FULL, first)  # unkeyed: diverted


def test_the_hub_holds_a_keyed_message_for_its_keys_instance() -> None:
    proto, io = holding_hub(1, 1)
    proto.route(b"s", HubItem(mid(1), key=42), 0.1)
    (home,) = [a[1] for a in io.take() if a[0] == "forward"]
    other = b"a2" if home == b"a1" else b"a1"
    proto.route(b"s", HubItem(mid(2), key=42), 0.2)  # its instance is full
    assert kinds(io.take()) == [("held", b"s", mid(2))]
    proto.route(b"s", HubItem(mid(3)), 0.3)  # unkeyed: to the other instance
    assert kinds(io.take()) == [("forward", other, mid(3))]
    proto.acks(other, [Group(b"s", [mid(3)], [])], 0.4)  # the other frees: it stays held
    assert kinds(io.take()) == []
    proto.acks(home, [Group(b"s", [mid(1)], [])], 0.5)  # its key's instance frees
    assert kinds(io.take()) == [("forward", home, mid(2))]


# -- the receiver's admission -------------------------------------------------------------


def test_a_receiver_runs_one_message_of_a_key_at_a_time_in_arrival_order() -> None:
    proto, io = receiver(100)
    assert receive(proto, [Item(mid(1), key=7), Item(mid(2), key=8)], 0.0) == [mid(1), mid(2)]
    # Two more of key 7 (the second of higher priority) and one of key 8 arrive.
    arriving = [Item(mid(3), key=7), Item(mid(4), key=7, priority=9)]
    assert receive(proto, arriving, 0.1) == []
    assert proto.waiting_count() == 2
    assert proto.running_count() == 4
    io.take()
    proto.handled(0, Item(mid(2), key=8), 0.2)  # another key ends: nothing of 7 starts
    assert [a for a in io.take() if a[0] == "start"] == []
    proto.handled(0, Item(mid(1), key=7), 0.3)
    assert [a[1] for a in io.take() if a[0] == "start"] == [mid(3)]  # not the priority 9
    proto.handled(0, Item(mid(3), key=7), 0.4)
    assert [a[1] for a in io.take() if a[0] == "start"] == [mid(4)]
    proto.handled(0, Item(mid(4), key=7), 0.5)
    assert proto.keys_held() == 0
    assert proto.waiting_count() == 0
    assert proto.running_count() == 0


def test_parked_messages_hold_their_lease_take_no_slot_and_are_dropped_on_close() -> None:
    proto, io = receiver(1)
    assert receive(proto, [Item(mid(1), key=7)], 0.0) == [mid(1)]
    assert receive(proto, [Item(mid(2), key=7)], 0.0) == []
    assert receive(proto, [Item(mid(3), key=8)], 0.0) == []  # the one slot is taken
    io.take()
    proto.tick(1.0)
    notices = {a[2].msg_id for a in io.take() if a[0] == "ack"}
    assert notices == {mid(1), mid(2), mid(3)}  # IN_PROGRESS for each: the lease
    proto.handled(0, Item(mid(1), key=7), 1.1)
    assert [a[1] for a in io.take() if a[0] == "start"] == [mid(3)]  # oldest first
    proto.close([], 1.2)
    assert proto.keys_held() == 0
    assert proto.waiting_count() == 0
    proto.handled(0, Item(mid(3), key=8), 1.3)  # a run that ends after close
    assert proto.running_count() == 0


def test_a_held_retry_whose_first_instance_came_back_with_room_goes_to_it_at_once() -> None:
    """Found by the simulation (seed 846): a keyed retry held for its key's new home,
    whose first instance registered again meanwhile, is handed back to that instance
    when the home frees; the first instance has room and nothing of its own to free, so
    the hand-over itself must dispatch it."""
    proto, io = holding_hub(2, 2)
    proto.route(b"s", HubItem(mid(1), key=42), 0.1)
    (first,) = [a[1] for a in io.take() if a[0] == "forward"]
    other = b"a2" if first == b"a1" else b"a1"
    proto.forget(first, "silent")
    proto.route(b"s", HubItem(mid(2)), 0.2)  # these fill the other instance
    proto.route(b"s", HubItem(mid(3)), 0.2)
    assert kinds(io.take()) == [("forward", other, mid(2)), ("forward", other, mid(3))]
    proto.route(b"s", HubItem(mid(1), attempt=2, key=42), 0.3)  # held for its new home
    assert kinds(io.take()) == [("held", b"s", mid(1))]
    ident = Identity("alpha", first.decode())
    proto.hello(first, ident, b"tok-" + first, ["alpha.Do"], ["ev.Tick"], 2, 500, 0.4)
    io.take()
    proto.acks(other, [Group(b"s", [mid(2)], [])], 0.5)  # the new home frees
    assert kinds(io.take()) == [("forward", first, mid(1))]  # back where it ran before
