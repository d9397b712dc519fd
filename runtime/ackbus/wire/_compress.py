"""Compressed bodies (docs/protocol.md, "Compressed bodies"): zstandard, an extra.

An item whose body is compressed sets :data:`~ackbus.wire.FLAG_ZSTD`; its body length is
the compressed length. Who compresses, who decompresses:

* a sender compresses a body of at least its policy's ``compress_above`` bytes when a
  hub it is connected to listed ``"zstd"`` in its WELCOME (``Welcome.codecs``);
* a hub lists it only if it can decompress itself, forwards a compressed item as it
  came to a peer that listed ``"zstd"`` in its HELLO (``Hello.codecs``), and
  decompresses it for any other (:func:`plain_item`);
* a receiver decompresses on reading the body (``MessageItem.body``).

So a peer without zstandard never gets a compressed body. Decompressing is bounded by
the message limit: a body that would grow beyond it is refused (TOO_LARGE), never
allocated.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Final

from ._codec import (
    _FLAGS_AT,
    _HDR,
    BODY_FRAME_FROM,
    FLAG_BODY_FRAME,
    FLAG_ZSTD,
    _zstd,
    decompress,
)

ZSTD: Final = "zstd"
"""The codec's name in ``Hello.codecs`` and ``Welcome.codecs``."""
LEVEL: Final = 1
"""zstandard's fastest positive level: on the bench's 100 KB JSON-like payload it made
15,904 bytes in 151 µs where the default level 3 made 18,262 in 172 µs."""
_BLEN: Final = struct.Struct("<I")
_BLEN_AT: Final = _HDR - 4

_NEEDS_EXTRA: Final = (
    "compression needs the zstandard package: pip install 'ackbus[zstd]' (or set "
    "compress_above to 0 in the policy)"
)


def codecs() -> tuple[str, ...]:
    """The codecs this process decompresses: what its HELLO or WELCOME lists."""
    return (ZSTD,) if _zstd() is not None else ()


def require_zstd() -> None:
    """``ModuleNotFoundError`` naming the extra, when zstandard is missing (a policy
    asks for compression)."""
    if _zstd() is None:
        raise ModuleNotFoundError(_NEEDS_EXTRA, name="zstandard")


@functools.cache
def _compressor() -> Any:
    return _zstd().ZstdCompressor(level=LEVEL)


def compress(body: bytes) -> bytes:
    """``body`` compressed (its size written in the frame, so a receiver allocates the
    exact size after checking it against its limit)."""
    require_zstd()
    return bytes(_compressor().compress(body))


def is_compressed(frame: bytes) -> bool:
    """Whether an item frame this process encoded carries a compressed body."""
    return bool(frame[_FLAGS_AT] & FLAG_ZSTD)


def plain_item(frame: bytes, body: bytes | None, limit: int) -> tuple[bytes, bytes | None]:
    """A compressed item (its frame, and its body frame or None) made plain, for a peer
    that does not decompress: the flag cleared, the body length patched, and a big body
    as a body frame (flagged), else in the item. ``frame`` must be a valid item."""
    tlen, rlen, elen = frame[_HDR - 10], frame[_HDR - 9], _BLEN.unpack_from(frame, _HDR - 8)[0]
    head_end = _HDR + tlen + rlen + elen
    compressed = body if body is not None else frame[head_end:]
    plain = decompress(compressed, limit, frame[:16])
    head = bytearray(frame[:head_end])
    flags = head[_FLAGS_AT] & ~(FLAG_ZSTD | FLAG_BODY_FRAME)
    _BLEN.pack_into(head, _BLEN_AT, len(plain))
    if len(plain) >= BODY_FRAME_FROM:
        head[_FLAGS_AT] = flags | FLAG_BODY_FRAME
        return bytes(head), plain
    head[_FLAGS_AT] = flags
    return bytes(head) + plain, None
