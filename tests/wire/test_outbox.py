"""The Outbox packs queued items into batches, keeps order, and reports backpressure."""

from __future__ import annotations

import pytest
from ackbus import LocalProtocolError, envelope_pb2, wire, wire_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def mid(i: int) -> bytes:
    return i.to_bytes(16, "big")


def msg(i: int) -> bytes:
    return wire.encode_message(mid(i), "t.T", b"")


def drain(ob: wire.Outbox) -> list[list[bytes]]:
    out = []
    while (mp := ob.pop()) is not None:
        out.append(mp)
    return out


def test_lone_message_is_one_multipart_and_on_ready_fires_once() -> None:
    calls = []
    ob = wire.Outbox(on_ready=lambda: calls.append(1))
    ob.message(msg(1))
    ob.message(msg(2))
    assert calls == [1]
    [mp] = drain(ob)
    assert [i.id for i in wire.decode_messages(mp)] == [mid(1), mid(2)]
    assert len(ob) == 0
    assert not ob
    ob.message(msg(3))
    assert calls == [1, 1]


def test_burst_is_packed_in_full_batches_in_order() -> None:
    ob = wire.Outbox()
    n = 3 * wire.MAX_BATCH + 8
    for i in range(n):
        ob.message(msg(i), peer=b"even" if i % 2 == 0 else b"odd")
    mps = drain(ob)
    batch = wire.MAX_BATCH
    assert [len(wire.decode_messages(mp)) for mp in mps] == [batch, batch, batch, 8]
    ids = [int.from_bytes(i.id, "big") for mp in mps for i in wire.decode_messages(mp)]
    assert ids == list(range(n))
    peers = [i.peer for i in wire.decode_messages(mps[0])[:3]]
    assert peers == [b"even", b"odd", b"even"]


def test_acks_group_per_peer_and_cap_at_max_acks() -> None:
    ob = wire.Outbox(max_acks=4)
    for i in range(6):
        ob.ack(mid(i), peer=b"a" if i < 3 else b"b")
    ob.full_ack(b"\x0a\x10" + mid(9), peer=b"b")
    mps = drain(ob)
    groups = [[(g.peer, len(g.ok_ids), len(g.full)) for g in wire.split_acks(mp)] for mp in mps]
    assert groups == [[(b"a", 3, 0), (b"b", 1, 0)], [(b"b", 2, 1)]]


def test_control_is_a_barrier_and_first_jumps_the_queue() -> None:
    ob = wire.Outbox()
    ob.message(msg(1))
    ob.control(wire.encode_heartbeat())
    ob.message(msg(2))
    ob.control(wire.encode_bye("x"), first=True)
    cmds = [wire.decode_command(mp) for mp in drain(ob)]
    C = wire.Command
    assert cmds == [C.BYE, C.MESSAGE, C.HEARTBEAT, C.MESSAGE]


def test_limit_batch_caps_later_batches_and_closes_a_full_one() -> None:
    ob = wire.Outbox()
    for i in range(10):
        ob.message(msg(i))
    ob.limit_batch(4)  # the open batch already holds more: it is closed as it is
    for i in range(10, 19):
        ob.message(msg(i))
    sizes = [len(wire.decode_messages(mp)) for mp in drain(ob)]
    assert sizes == [10, 4, 4, 1]
    for peer_says in (0, wire.MAX_BATCH + 1):  # "no limit" and nonsense: the maximum
        ob.limit_batch(peer_says)
        assert ob.max_batch == wire.MAX_BATCH


def test_unpop_restores_order_and_count() -> None:
    ob = wire.Outbox()
    n = wire.MAX_BATCH + 6
    for i in range(n):
        ob.message(msg(i))
    assert len(ob) == n
    first = ob.pop()
    assert first is not None
    assert len(ob) == 6
    ob.unpop(first)
    assert len(ob) == n
    assert drain(ob)[0] is first


def test_writable_follows_high_water_and_blocked() -> None:
    ob = wire.Outbox(high_water=3)
    assert ob.message(msg(1))
    assert ob.message(msg(2))
    assert not ob.message(msg(3))
    assert not ob.writable
    ob.pop()
    assert ob.writable
    ob.blocked = True
    assert not ob.writable
    assert not ob.ack(mid(1))


def test_invalid_use_is_local_error() -> None:
    ob = wire.Outbox()
    with pytest.raises(LocalProtocolError):
        ob.ack(b"short")
    with pytest.raises(LocalProtocolError):
        ob.control([])
    with pytest.raises(LocalProtocolError):
        ob.message(msg(1), peer=b"x" * 256)
    with pytest.raises(LocalProtocolError):
        wire.Outbox(max_batch=wire.MAX_BATCH + 1)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from("mac"), st.sampled_from([b"", b"p", b"q"]))))
def test_nothing_lost_nothing_duplicated(ops: list[tuple[str, bytes]]) -> None:
    ob = wire.Outbox(max_batch=5, max_acks=3)
    sent_msgs, sent_acks, controls = [], [], 0
    for n, (op, peer) in enumerate(ops):
        if op == "m":
            ob.message(msg(n), peer)
            sent_msgs.append(mid(n))
        elif op == "a":
            ob.ack(mid(n), peer)
            sent_acks.append(mid(n))
        else:
            ob.control(wire.encode_heartbeat())
            controls += 1
    assert len(ob) == len(ops)
    got_msgs, got_acks, got_controls = [], [], 0
    for mp in drain(ob):
        cmd = wire.decode_command(mp)
        if cmd is wire.Command.MESSAGE:
            got_msgs += [i.id for i in wire.decode_messages(mp)]
        elif cmd is wire.Command.ACK:
            got_acks += [i for g in wire.split_acks(mp) for i in g.ok_ids]
        else:
            got_controls += 1
    assert got_msgs == sent_msgs
    assert sorted(got_acks) == sorted(sent_acks)
    assert got_controls == controls


def test_bulk_acks_split_at_max_acks() -> None:
    ob = wire.Outbox(max_acks=4)
    ob.ack(mid(100), b"p")
    assert ob.acks([mid(i) for i in range(10)], b"p")
    assert len(ob) == 11
    mps = drain(ob)
    sizes = [sum(len(g.ok_ids) for g in wire.split_acks(mp)) for mp in mps]
    assert sizes == [4, 4, 3]
    got = [i for mp in mps for g in wire.split_acks(mp) for i in g.ok_ids]
    assert got == [mid(100)] + [mid(i) for i in range(10)]
    with pytest.raises(LocalProtocolError):
        ob.acks([b"short"])


def test_a_newer_first_control_supersedes_the_unsent_one() -> None:
    def hello(*commands: str) -> list[bytes]:
        return wire.encode_hello(
            wire_pb2.Hello(identity=envelope_pb2.Identity(service="s"), commands=commands)
        )

    ob = wire.Outbox()
    ob.control(hello("a.A"), first=True)  # queued while not connected
    ob.message(msg(1))
    ob.control(wire.encode_heartbeat())
    ob.control(hello("a.A", "b.B"), first=True)  # said again on connect
    assert len(ob) == 3
    mps = drain(ob)
    cmds = [wire.decode_command(mp) for mp in mps]
    assert cmds == [wire.Command.HELLO, wire.Command.MESSAGE, wire.Command.HEARTBEAT]
    assert list(wire.decode_hello(mps[0]).commands) == ["a.A", "b.B"]


def packed(items: list[bytes]) -> bytes:
    """Items laid out as a packed group carries them (what PackedRun.chunk gives)."""
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


BIG = wire.encode_message(mid(999), "t.T", b"x" * wire.PACK_BELOW)


def test_messages_are_batched_as_message_frames_lays_them_out() -> None:
    """The outbox builds its groups in wire layout as it goes: the result is byte for
    byte the codec's own layout of the same groups."""
    ob = wire.Outbox()
    small = [msg(i) for i in range(5)]
    for item, peer in zip(small[:3], [b"a", b"a", b"b"], strict=True):
        ob.message(item, peer)
    ob.message(BIG, b"b")
    ob.message(small[3], b"b")
    ob.message(small[4], b"")
    expected = wire.message_frames(
        [(b"a", small[:2]), (b"b", [small[2], BIG, small[3]]), (b"", [small[4]])]
    )
    assert drain(ob) == [expected]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("run"), st.sampled_from([b"", b"p", b"q"]), st.integers(1, 90)),
        st.tuples(st.just("big"), st.sampled_from([b"p", b"q"]), st.just(0)),
        st.tuples(st.just("acks"), st.sampled_from([b"p", b"q"]), st.integers(1, 20)),
        st.tuples(st.sampled_from(["control", "first", "pop"]), st.just(b""), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(1, wire.MAX_BATCH), st.integers(1, 40))
def test_packed_chunks_and_bulk_acks_batch_exactly_as_one_call_per_item(
    ops: list[tuple[str, bytes, int]], max_batch: int, max_acks: int
) -> None:
    """``packed`` (a hub forwarding a run as one chunk) and ``acks`` give the same
    multiparts, byte for byte, as ``message`` and ``ack`` once per item, whatever the
    batch limits, peers, barriers and pops in between."""
    one = wire.Outbox(max_batch=max_batch, max_acks=max_acks, high_water=50)
    bulk = wire.Outbox(max_batch=max_batch, max_acks=max_acks, high_water=50)
    n = 0
    for op, peer, count in ops:
        if op == "run":
            items = [wire.encode_message(mid(n + k), "t.T", b"b" * k) for k in range(count)]
            for item in items:
                writable = one.message(item, peer)
            assert bulk.packed(packed(items), count, peer) == writable
        elif op == "big":
            assert bulk.message(BIG, peer) == one.message(BIG, peer)
        elif op == "acks":
            ids = [mid(n + k) for k in range(count)]
            for i in ids:
                writable = one.ack(i, peer)
            assert bulk.acks(ids, peer) == writable
        elif op in ("control", "first"):
            hb = wire.encode_heartbeat()
            assert bulk.control(hb, first=op == "first") == one.control(hb, first=op == "first")
        else:
            assert bulk.pop() == one.pop()
        n += count
        assert len(bulk) == len(one)
    assert drain(bulk) == drain(one)


def test_packed_refuses_what_cannot_be_sent() -> None:
    ob = wire.Outbox()
    with pytest.raises(LocalProtocolError):
        ob.packed(packed([msg(1)]), 1, peer=b"x" * 256)
    with pytest.raises(LocalProtocolError):
        ob.packed(b"", 0)
    assert len(ob) == 0
