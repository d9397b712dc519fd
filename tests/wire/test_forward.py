"""scan_messages, the hub's reading of a MESSAGE multipart, agrees with decode_messages:
the same items in the same order when the input is valid, the very same error when it
is not. Runs hold exactly the items a hub may forward as one chunk."""

from __future__ import annotations

import struct

from ackbus import RemoteProtocolError, wire
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LIMITS = wire.Limits(max_message_bytes=40_000, max_batch=64)
U32 = struct.Struct("<I")
Row = tuple[bytes, str, str, int, int, bytes, str]
"""id, type, recipient, kind, attempt, item bytes, rpc: what a hub reads of an item."""


def rows_of(entries: list[wire.PackedRun | wire.MessageItem]) -> list[Row]:
    """The items scan_messages found, in order, runs taken apart again."""
    rows: list[Row] = []
    for entry in entries:
        if isinstance(entry, wire.MessageItem):
            rows.append(
                (
                    entry.id,
                    entry.type,
                    entry.recipient,
                    entry.kind,
                    entry.attempt,
                    entry.frame,
                    entry.method,
                )
            )
            continue
        chunk, pos = entry.chunk(), 0
        for msg_id in entry.ids:
            end = pos + 4 + U32.unpack_from(chunk, pos)[0]
            frame = chunk[pos + 4 : end]
            assert len(frame) < wire.PACK_BELOW
            rows.append(
                (msg_id, entry.type, entry.recipient, wire.KIND_COMMAND, 1, frame, entry.method)
            )
            pos = end
        assert pos == len(chunk)  # the chunk is the run's items and nothing else
    return rows


def outcome(decode: object, frames: list[bytes]) -> object:
    try:
        entries = decode(frames, LIMITS)  # type: ignore[operator]
    except RemoteProtocolError as exc:
        return ("refused", str(exc), exc.code, exc.message_id)
    if decode is wire.scan_messages:
        return rows_of(entries)
    return [(i.id, i.type, i.recipient, i.kind, i.attempt, i.frame, i.method) for i in entries]


def agree(frames: list[bytes]) -> object:
    """Both readings of ``frames`` agree; the scan reads them twice: maybe with names it
    has not seen (it hands those to decode_messages), then with every valid name known,
    so it takes its fast way wherever the input allows."""
    first = outcome(wire.scan_messages, frames)
    expected = outcome(wire.decode_messages, frames)
    assert first == expected
    assert outcome(wire.scan_messages, frames) == expected
    return expected


ITEM = st.fixed_dictionaries(
    {
        "kind": st.sampled_from([wire.KIND_COMMAND] * 4 + [wire.KIND_EVENT]),
        "attempt": st.sampled_from([1, 1, 1, 2]),
        "type_name": st.sampled_from(["poker.StartHand", "poker.Charge", "t.T"])
        | st.integers(0, 2**40).map("fresh.N{}".format),
        "recipient": st.sampled_from(["", "", "table", "table/t-1"]),
        "size": st.sampled_from([0, 3, 100, 100, wire.PACK_BELOW - 80, wire.PACK_BELOW]),
        "flags": st.sampled_from([0, 0, wire.FLAG_REQUEST]),
        "method": st.sampled_from(["", "", "poker.Table/StartHand", "p.S/" + "M" * 200]),
    }
)


def encode(n: int, spec: dict[str, object]) -> bytes:
    return wire.encode_message(
        n.to_bytes(16, "big"),
        str(spec["type_name"]),
        b"b" * int(spec["size"]),  # type: ignore[call-overload]
        envelope=(wire.method_prefix(str(spec["method"])) if spec["method"] else b"") + b"env",
        recipient=str(spec["recipient"]),
        kind=int(spec["kind"]),  # type: ignore[call-overload]
        attempt=int(spec["attempt"]),  # type: ignore[call-overload]
        flags=int(spec["flags"]),  # type: ignore[call-overload]
    )


@st.composite
def multiparts(draw: st.DrawFn) -> list[bytes]:
    """Valid MESSAGE multiparts: packed groups (which may hold big items too, as a
    foreign sender may pack them) and groups of separate frames, any peers."""
    frames = [wire.MESSAGE_FRAME]
    n = 0
    for _ in range(draw(st.integers(1, 3))):
        specs = draw(st.lists(ITEM, min_size=1, max_size=12))
        items = [encode(n + k, spec) for k, spec in enumerate(specs)]
        n += len(items)
        peer = draw(st.sampled_from([b"", b"origin"]))
        if draw(st.booleans()):
            frames.append(wire.packed_group_frame(peer, items))
        else:
            frames += [wire.group_frame(len(items), peer), *items]
    return frames


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(multiparts())
def test_valid_multiparts_read_the_same(frames: list[bytes]) -> None:
    rows = agree(frames)
    assert isinstance(rows, list)
    assert rows


def poked(item: bytes, at: int, value: int) -> bytes:
    out = bytearray(item)
    out[at] = value
    return bytes(out)


def test_each_refusal_of_decode_messages_comes_back_from_the_scan() -> None:
    item = wire.encode_message(b"i" * 16, "t.T", b"x", recipient="svc")
    assert len(item) == 58 + 3 + 3 + 1
    good = wire.packed_group_frame(b"", [item])
    bad_items = [
        poked(item, 16, 0),  # attempt 0
        poked(item, 20, 3),  # kind
        poked(item, 21, 2),  # flags
        poked(item, 48, 0),  # no type name (lengths then do not add up either)
        poked(item, 48, 4),  # lengths do not add up
        poked(item, 49, 2),
        poked(item, 57, 1),
        poked(item, 59, 32),  # a space in the type name
        poked(item, 62, 0),  # a control character in the recipient
        poked(item, 58, 0xFF),  # not UTF-8
        item[:57],  # shorter than its header
        item + b"x" * 40_000,  # too large
    ]
    cases = [
        [wire.MESSAGE_FRAME],
        [wire.MESSAGE_FRAME, b""],
        [wire.MESSAGE_FRAME, b"\x80"],
        [wire.MESSAGE_FRAME, b"\x81\x05ab"],
        [wire.MESSAGE_FRAME, good[:-1]],
        [wire.MESSAGE_FRAME, good[:5]],
        [wire.MESSAGE_FRAME, good + b"x"],
        [wire.MESSAGE_FRAME, wire.packed_group_frame(b"", [item] * 40)] * 2,
        [wire.MESSAGE_FRAME, wire.group_frame(2), item],
        [wire.MESSAGE_FRAME, b"\x01" + b"p" * 256, item],
        [wire.MESSAGE_FRAME, good, b"\x00"],
        [wire.MESSAGE_FRAME, good, b"\xc1"],
    ]
    for bad in bad_items:
        cases.append([wire.MESSAGE_FRAME, wire.packed_group_frame(b"", [item, bad, item])])
        cases.append([wire.MESSAGE_FRAME, wire.group_frame(2), item, bad])
    for frames in cases:
        refused = agree(frames)
        assert isinstance(refused, tuple), frames
        assert refused[0] == "refused"


def test_runs_break_where_routing_could_differ() -> None:
    def item(n: int, **kw: object) -> bytes:
        return wire.encode_message(n.to_bytes(16, "big"), str(kw.pop("t", "a.A")), b"x", **kw)  # type: ignore[arg-type]

    items = [
        item(0),
        item(1),
        item(2, t="b.B"),
        item(3, t="b.B", recipient="svc"),
        item(4, t="b.B", recipient="svc"),
        item(5, t="b.B", recipient="svc", attempt=2),  # a retry: item by item
        item(6, t="b.B", recipient="svc"),
        item(7, kind=wire.KIND_EVENT),
        wire.encode_message((8).to_bytes(16, "big"), "a.A", b"x" * wire.PACK_BELOW),
        item(9),
    ]
    frames = wire.encode_messages([(b"", items)])
    wire.decode_messages(frames)  # every name known
    entries = wire.scan_messages(frames)
    shape = [
        (e.type, e.recipient, [int.from_bytes(i, "big") for i in e.ids])
        if isinstance(e, wire.PackedRun)
        else int.from_bytes(e.id, "big")
        for e in entries
    ]
    assert shape == [
        ("a.A", "", [0, 1]),
        ("b.B", "", [2]),
        ("b.B", "svc", [3, 4]),
        5,
        ("b.B", "svc", [6]),
        7,
        8,
        ("a.A", "", [9]),
    ]
    agree(frames)


def test_stretches_cut_a_run_where_the_target_changes() -> None:
    items = [wire.encode_message(n.to_bytes(16, "big"), "a.A", b"x" * n) for n in range(6)]
    frames = wire.encode_messages([(b"", items)])
    wire.decode_messages(frames)
    [run] = wire.scan_messages(frames)
    assert isinstance(run, wire.PackedRun)
    cuts = run.stretches(["p", "p", "q", "p", "p", "p"])
    assert [(t, n) for t, _, n in cuts] == [("p", 2), ("q", 1), ("p", 3)]
    assert b"".join(chunk for _, chunk, _ in cuts) == run.chunk()
    assert cuts[1][1] == wire.packed_group_frame(b"", items[2:3])[2:]  # the item, packed


def test_runs_split_where_the_rpc_changes() -> None:
    """Items of one type and recipient naming different rpcs are routed apart: a run
    holds one rpc (a long name, past one varint byte, goes item by item)."""
    rpcs = ["a.S/Create", "a.S/Create", "a.S/CreateAsync", "", "a.S/" + "L" * 150]
    items = [
        wire.encode_message(
            bytes([n]) * 16,
            "a.Req",
            b"x",
            envelope=(wire.method_prefix(rpc) if rpc else b"") + b"\x1a\x00",
        )
        for n, rpc in enumerate(rpcs)
    ]
    frames = [wire.MESSAGE_FRAME, wire.packed_group_frame(b"", items)]
    agree(frames)
    entries = wire.scan_messages(frames, LIMITS)
    assert [(type(e).__name__, e.method) for e in entries] == [
        ("PackedRun", "a.S/Create"),
        ("PackedRun", "a.S/CreateAsync"),
        ("PackedRun", ""),
        ("MessageItem", "a.S/" + "L" * 150),
    ]
    assert [len(e.ids) for e in entries if isinstance(e, wire.PackedRun)] == [2, 1, 1]
