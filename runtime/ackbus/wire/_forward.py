"""Reading a MESSAGE multipart the way a hub forwards it: in runs, not item by item.

A hub needs five things of an item: its id, kind, attempt, type and recipient, and its
bytes to pass on. :func:`decode_messages` gives an endpoint a :class:`MessageItem` per
item; a hub forwarding 50 items of one multipart to the same instance would build 50
objects, slice 50 items out of the group frame, and join them again into a new one.
:func:`scan_messages` instead finds *runs*: consecutive items of a packed group that are
first attempts of commands of one type for one recipient. Their bytes, u32 length
prefixes included, already lie in the group frame exactly as a packed group carries
them, so the hub routes a run with one call (``RoutingTable.route_commands``) and queues
its bytes as one chunk (``Outbox.packed``). Everything else (events, retries, big items)
comes back as a :class:`MessageItem`, for the hub's item-by-item path; so do items
with an ordering key (``FLAG_KEYED``), which the hub routes by their key.

Validation is :func:`decode_messages`'s, by construction: the scan reads each header
with one ``struct`` call and checks what ``MessageItem`` checks, and at the first thing
it does not accept at once (anything malformed, or a name it has not seen yet) it hands
the whole multipart to :func:`decode_messages`, which refuses it with the very error an
endpoint would get, or returns its items.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from ._codec import (
    _FLAGS_AT,
    _HDR,
    _KNOWN_FLAGS,
    _METHOD_TAG,
    DEFAULT_LIMITS,
    FLAG_BODY_FRAME,
    FLAG_KEYED,
    FLAG_ZSTD,
    KIND_COMMAND,
    KIND_EVENT,
    MAX_NAME,
    PACK_BELOW,
    PACKED,
    Limits,
    MessageItem,
    _valid_names,
    decode_messages,
    skip_packed,
)

_PREFIXED_HEADER: Final = struct.Struct("<I16sIBB26xBBII")
"""A packed item's u32 length, then its header's id, attempt, kind, flags, type length,
recipient length, envelope length and body length (priority and times skipped: any
bytes are valid there)."""
_LENGTH: Final = struct.Struct("<I")
_NAMES_AT: Final = 4 + _HDR
"""Where the type name starts, from an item's length prefix."""

T = TypeVar("T")


class PackedRun:
    """Consecutive items of one packed group frame that a hub routes alike: first
    attempts of commands, of one type, rpc (``method``, "" if none) and recipient, each
    under ``PACK_BELOW`` bytes.

    ``frame[start:end]`` is their bytes with their u32 length prefixes (:meth:`chunk`),
    ready to be forwarded in a packed group of its own; ``ids`` are their message ids.
    """

    __slots__ = ("end", "frame", "ids", "method", "recipient", "start", "type")

    def __init__(
        self, msg_type: str, recipient: str, frame: bytes, start: int, method: str = ""
    ) -> None:
        self.type = msg_type
        self.method = method
        self.recipient = recipient
        self.frame = frame
        self.start = start
        self.end = start
        self.ids: list[bytes] = []

    def chunk(self) -> bytes:
        """All the run's items, length-prefixed, as a packed group carries them."""
        return self.frame[self.start : self.end]

    def stretches(self, targets: Sequence[T]) -> list[tuple[T, bytes, int]]:
        """``(target, chunk, count)`` for each stretch of consecutive items with equal
        ``targets`` (one per item, in order): what a hub sends where, when the run's
        items go to several instances."""
        out: list[tuple[T, bytes, int]] = []
        frame = self.frame
        pos = self.start
        n = len(targets)
        first = 0
        while first < n:
            target = targets[first]
            stop = first + 1
            while stop < n and targets[stop] == target:
                stop += 1
            end = skip_packed(frame, pos, stop - first)
            out.append((target, frame[pos:end], stop - first))
            pos, first = end, stop
        return out

    def items(self, limits: Limits = DEFAULT_LIMITS) -> list[MessageItem]:
        """The run's items one by one (a hub that must hold some of them)."""
        out = []
        frame = self.frame
        pos = self.start
        for _ in self.ids:
            (size,) = _LENGTH.unpack_from(frame, pos)
            out.append(MessageItem(frame[pos + 4 : pos + 4 + size], b"", limits))
            pos += 4 + size
        return out

    def __repr__(self) -> str:
        return f"<PackedRun {self.type} x{len(self.ids)}>"


def scan_messages(
    frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS
) -> list[PackedRun | MessageItem]:
    """The items of a MESSAGE multipart, in order, as :class:`PackedRun` runs and
    single :class:`MessageItem` objects. Accepts exactly what :func:`decode_messages`
    accepts and raises what it raises (only :class:`~ackbus.RemoteProtocolError`)."""
    try:
        scanned = _scan(frames, limits)
    except Exception:  # any oddity: decode_messages says precisely what is wrong
        scanned = None
    if scanned is None:
        return list(decode_messages(frames, limits))
    return scanned


def _scan(frames: Sequence[bytes], limits: Limits) -> list[PackedRun | MessageItem] | None:
    """The fast reading; ``None`` (or an exception) where it does not accept at once."""
    n = len(frames)
    if n < 2:
        return None
    max_batch = limits.max_batch
    max_bytes = limits.max_message_bytes
    names = _valid_names
    unpack = _PREFIXED_HEADER.unpack_from
    out: list[PackedRun | MessageItem] = []
    total = 0
    i = 1
    while i < n:
        group = frames[i]
        i += 1
        size = len(group)
        count = group[0] & ~PACKED
        total += count
        if not 1 <= count <= max_batch or total > max_batch:
            return None
        if not group[0] & PACKED:
            if size > 1 + MAX_NAME:
                return None
            peer = group[1:]
            for _ in range(count):
                frame = frames[i]  # an IndexError if missing: decode_messages says so
                i += 1
                if frame[_FLAGS_AT] & FLAG_BODY_FRAME:
                    out.append(MessageItem(frame, peer, limits, frames[i]))
                    i += 1
                else:
                    out.append(MessageItem(frame, peer, limits))
            continue
        pos = 2 + group[1]
        peer = group[2:pos]
        run: PackedRun | None = None
        run_type = run_recipient = run_method = ""
        add_id: Callable[[bytes], None]  # the open run's ids.append
        for _ in range(count):
            start = pos
            ilen, mid, attempt, kind, flags, tlen, rlen, elen, blen = unpack(group, pos)
            pos += 4 + ilen
            if (
                pos > size
                or ilen != _HDR + tlen + rlen + elen + blen
                or ilen > max_bytes
                or flags & ~_KNOWN_FLAGS
                or flags & FLAG_BODY_FRAME
                or not tlen
                or not attempt
                or (kind != KIND_COMMAND and kind != KIND_EVENT)
            ):
                return None
            at = start + _NAMES_AT
            msg_type = names.get(group[at : at + tlen])
            if msg_type is None:
                return None
            if rlen:
                at += tlen
                recipient = names.get(group[at : at + rlen])
                if recipient is None:
                    return None
            else:
                recipient = ""
            method: str | None = ""  # None: it does not join a run
            if (
                kind != KIND_COMMAND
                or attempt != 1
                or ilen >= PACK_BELOW
                or flags & (FLAG_KEYED | FLAG_ZSTD)
            ):
                method = None
            elif elen:
                at += rlen if rlen else tlen  # the envelope
                if group[at] == _METHOD_TAG:
                    mlen = group[at + 1]
                    # A name of 128 bytes or more (a two-byte length) goes item by item.
                    if mlen & 0x80 or not mlen or mlen + 2 > elen:
                        method = None
                    else:
                        method = names.get(group[at + 2 : at + 2 + mlen])
                        if method is None:
                            return None  # not seen yet: decode_messages checks it
            if method is not None:
                if (
                    run is None
                    or msg_type != run_type
                    or recipient != run_recipient
                    or method != run_method
                ):
                    if run is not None:
                        run.end = start
                    run = PackedRun(msg_type, recipient, group, start, method)
                    run_type, run_recipient, run_method = msg_type, recipient, method
                    add_id = run.ids.append
                    out.append(run)
                add_id(mid)
            else:
                if run is not None:
                    run.end = start
                    run = None
                out.append(MessageItem(group[start + 4 : pos], peer, limits))
        if run is not None:
            run.end = pos
        if pos != size:
            return None
    return out
