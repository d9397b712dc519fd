"""Compressed bodies (FLAG_ZSTD; docs/protocol.md, "Compressed bodies"): the codec's
part. Who may be sent what is tests/integration/test_compress.py's."""

from __future__ import annotations

import json
from typing import Any

import pytest
import zstandard
from ackbus import RemoteProtocolError, wire
from ackbus.wire import _codec, _compress

PLAIN = json.dumps([{"id": i, "name": f"player-{i}", "chips": 1000 + i} for i in range(3000)])
BODY = PLAIN.encode()
ZIPPED = wire.compress(BODY)


def item(body: bytes, flags: int = wire.FLAG_ZSTD, split: bool = False) -> bytes:
    return wire.pack_item(
        b"z" * 16, b"pkg.J", b"", b"", body, wire.KIND_COMMAND, 1, 0, flags, 1, 2, 0, split
    )


def refused(code: str) -> Any:
    return pytest.raises(RemoteProtocolError, match=f"^{code}:")


def test_a_compressed_body_reads_as_the_plain_one() -> None:
    assert len(ZIPPED) < len(BODY) // 5
    (small,) = wire.decode_messages([wire.MESSAGE_FRAME, wire.group_frame(1), item(ZIPPED)])
    assert small.body == BODY
    assert bytes(small.body_buffer()) == BODY
    big_zipped = wire.compress(bytes(range(256)) * 1024)  # does not shrink below 64 KiB
    frames = [wire.BODIES_FRAME, wire.group_frame(1), item(big_zipped, split=True), big_zipped]
    (big,) = wire.decode_messages(frames)
    assert big.body == bytes(range(256)) * 1024


def test_decompressing_is_bounded_by_the_message_limit() -> None:
    limits = wire.Limits(max_message_bytes=len(BODY) - 1)
    (it,) = wire.decode_messages([wire.MESSAGE_FRAME, wire.group_frame(1), item(ZIPPED)], limits)
    with refused("TOO_LARGE"):
        _ = it.body
    # without the size in the frame, zstandard stops at the limit
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(BODY)
    with refused("MALFORMED"):
        wire.decompress(unsized, len(BODY) - 1)
    assert wire.decompress(unsized, len(BODY)) == BODY


@pytest.mark.parametrize("junk", [b"", b"\x00", b"garbage", ZIPPED[:-3]])
def test_junk_is_malformed_never_another_error(junk: bytes) -> None:
    (it,) = wire.decode_messages([wire.MESSAGE_FRAME, wire.group_frame(1), item(junk)])
    with refused("MALFORMED"):
        _ = it.body
    with refused("MALFORMED"):
        it.body_buffer()


def test_bytes_after_the_compressed_frame_are_ignored() -> None:
    (it,) = wire.decode_messages([wire.MESSAGE_FRAME, wire.group_frame(1), item(ZIPPED + b"x")])
    assert it.body == BODY


def test_plain_item_makes_what_a_peer_without_zstd_reads() -> None:
    frame, body = wire.plain_item(item(ZIPPED, wire.FLAG_ZSTD | wire.FLAG_REQUEST), None, 1 << 24)
    assert frame == item(BODY, wire.FLAG_REQUEST, split=True)  # big: a body frame again
    assert body == BODY
    small = b"x" * 5000
    frame, body = wire.plain_item(item(wire.compress(small)), None, 1 << 24)
    assert frame == item(small, 0)
    assert body is None
    with refused("TOO_LARGE"):
        wire.plain_item(item(ZIPPED), None, 1000)


def test_a_hub_routes_compressed_items_one_by_one() -> None:
    """So that it can decompress each for a receiver that cannot."""
    plain = item(b"p", 0)
    frames = wire.encode_messages([(b"", [plain, item(wire.compress(b"q" * 100)), plain])])
    scanned = wire.scan_messages(frames)
    assert [type(e).__name__ for e in scanned] == ["PackedRun", "MessageItem", "PackedRun"]


def test_without_zstandard_a_policy_asking_for_it_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_compress, "_zstd", lambda: None)
    monkeypatch.setattr(_codec, "_zstd", lambda: None)
    assert wire.codecs() == ()
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'ackbus\[zstd\]'"):
        wire.compress(BODY)
    with refused("MALFORMED"):  # a receiver without it refuses a compressed body
        wire.decompress(ZIPPED, 1 << 24)
