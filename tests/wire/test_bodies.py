"""Body frames (protocol version 3): a big body as a frame of its own after its item,
in MESSAGE multiparts that start with BODIES_FRAME; joined into its item for a peer of
version 1 or 2 (docs/protocol.md, "Body frames")."""

from __future__ import annotations

from typing import Any

import pytest
from ackbus import LocalProtocolError, RemoteProtocolError, wire

ENV = b"\x0a\x03abc"
BODY = bytes(range(256)) * (wire.BODY_FRAME_FROM // 256 + 3)


def split_item(body: bytes = BODY, mid: bytes = b"m" * 16, flags: int = 0) -> bytes:
    return wire.pack_item(
        mid, b"pkg.Big", b"svc", ENV, body, wire.KIND_COMMAND, 1, 3, flags, 10, 20, 30, True
    )


def whole_item(body: bytes = BODY, mid: bytes = b"m" * 16, flags: int = 0) -> bytes:
    return wire.pack_item(
        mid, b"pkg.Big", b"svc", ENV, body, wire.KIND_COMMAND, 1, 3, flags, 10, 20, 30
    )


def refused(code: str) -> Any:
    return pytest.raises(RemoteProtocolError, match=f"^{code}:")


def test_the_item_frame_leaves_the_body_out_and_says_so() -> None:
    head = split_item()
    assert len(head) == wire.ITEM_HEADER.size + len(b"pkg.Big") + len(b"svc") + len(ENV)
    assert head[21] & wire.FLAG_BODY_FRAME
    assert wire.ITEM_HEADER.unpack_from(head)[-1] == len(BODY)  # the body frame's length
    assert wire.join_body(head, BODY) == whole_item()  # what an older peer is sent


def test_an_outbox_sends_the_body_as_its_own_frame_to_a_peer_that_takes_them() -> None:
    out = wire.Outbox()
    out.body_frames = True
    small = whole_item(b"s", b"n" * 16)
    out.message(small, b"o")
    out.message(split_item(), b"o", BODY)
    frames = out.pop()
    assert frames is not None
    assert frames[0] == wire.BODIES_FRAME
    assert frames[-1] is BODY  # the very object: no copy on the way to the socket
    items = wire.decode_messages(frames)
    assert [i.id for i in items] == [b"n" * 16, b"m" * 16]
    big = items[1]
    assert big.body_frame is BODY
    assert big.body == BODY
    assert big.peer == b"o"
    view = big.body_buffer()
    assert isinstance(view, memoryview)
    assert view.obj is BODY
    assert big.size == len(frames[-2]) + len(BODY)
    assert big.envelope().recipient == "svc"
    assert big.envelope_bytes == ENV
    assert big.method == ""
    assert big.priority == 3


def test_an_outbox_joins_the_body_for_a_peer_that_does_not_take_body_frames() -> None:
    out = wire.Outbox()  # body_frames False: the peer negotiated version 1 or 2
    out.message(split_item(), b"", BODY)
    frames = out.pop()
    assert frames == [wire.MESSAGE_FRAME, wire.group_frame(1), whole_item()]
    (item,) = wire.decode_messages(frames)
    assert item.body_frame is None
    assert item.body == BODY


def test_a_multipart_without_bodies_keeps_frame_version_1() -> None:
    out = wire.Outbox()
    out.body_frames = True
    out.message(whole_item(b"x"))
    out.message(split_item(), b"", BODY)  # the next batch
    out.control([wire.HEARTBEAT_FRAME])
    out.message(whole_item(b"y"))
    firsts = []
    while (frames := out.pop()) is not None:
        firsts.append(frames[0])
    assert firsts == [wire.BODIES_FRAME, wire.HEARTBEAT_FRAME, wire.MESSAGE_FRAME]


def test_the_hub_scan_reads_body_frames_as_the_endpoint_does() -> None:
    frames = [wire.BODIES_FRAME, wire.group_frame(2, b"p"), split_item(), BODY, whole_item(b"z")]
    scanned = wire.scan_messages(frames)
    assert [type(e) for e in scanned] == [wire.MessageItem, wire.MessageItem]
    first = scanned[0]
    assert isinstance(first, wire.MessageItem)
    assert first.body_frame is BODY
    assert [i.id for i in wire.decode_messages(frames)] == [b"m" * 16, b"m" * 16]


def test_a_retry_patches_only_the_item_frame() -> None:
    head = split_item()
    again = wire.reattempt(head, 2, 99)
    assert len(again) == len(head)
    (item,) = wire.decode_messages([wire.BODIES_FRAME, wire.group_frame(1), again, BODY])
    assert (item.attempt, item.sent_at_ns, item.body) == (2, 99, BODY)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        # the promised body frame is missing
        ([wire.BODIES_FRAME, wire.group_frame(1), split_item()], "MALFORMED"),
        # a body frame of another length than the header says
        ([wire.BODIES_FRAME, wire.group_frame(1), split_item(), BODY[:-1]], "MALFORMED"),
        # a flagged item inside a packed group has no next frame of its own
        ([wire.MESSAGE_FRAME, wire.packed_group_frame(b"", [split_item(b"x")])], "MALFORMED"),
        # the body counts against the message limit
        (
            [wire.BODIES_FRAME, wire.group_frame(1), split_item(b"x" * 2000), b"x" * 2000],
            "TOO_LARGE",
        ),
        # two items promised, one item and its body there
        ([wire.BODIES_FRAME, wire.group_frame(2), split_item(), BODY], "MALFORMED"),
    ],
)
def test_broken_body_frames_are_refused(frames: list[bytes], code: str) -> None:
    limits = wire.Limits(max_message_bytes=1024 if code == "TOO_LARGE" else 16 << 20)
    with refused(code):
        wire.decode_messages(frames, limits)
    with refused(code):
        wire.scan_messages(frames, limits)


def test_a_body_frame_may_come_in_a_version_1_multipart() -> None:
    """The item's flag, not frame 0, says a body frame follows: frame version 2 only
    tells the transport to receive without copying."""
    (item,) = wire.decode_messages([wire.MESSAGE_FRAME, wire.group_frame(1), split_item(), BODY])
    assert item.body == BODY


def test_encode_message_makes_no_flagged_item() -> None:
    """A flagged item is only made with its body frame (pack_item(split=True))."""
    with pytest.raises(LocalProtocolError):
        wire.encode_message(b"m" * 16, "pkg.Big", b"", flags=wire.FLAG_BODY_FRAME)
