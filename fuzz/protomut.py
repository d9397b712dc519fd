"""Field-by-field mutations of protobuf bytes, for fuzzing without libprotobuf-mutator.

:func:`fields` reads the protobuf wire format into ``(number, wire type, value)`` triples
without a schema (a varint or fixed value as an int, a length-delimited one as bytes);
:func:`encode` writes them back; :func:`mutate` changes one field the way a hostile or
buggy peer might: an edge value, a wrong wire type, a dropped, doubled or unknown field,
an overlong varint, a string that is not UTF-8, deep nesting, a cut. A length-delimited
field that reads as a message itself is mutated inside, so an envelope's sender or an
ack's error is reached too.
"""

from __future__ import annotations

import random
from typing import Final

VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
SGROUP: Final = 3
EGROUP: Final = 4
I32: Final = 5

Field = tuple[int, int, int | bytes]

EDGE_INTS: Final = (
    0, 1, 2, 3, 7, 8, 99, 127, 128, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31,
    2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
)  # fmt: skip
EDGE_BYTES: Final = (
    b"", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"a b", b"\x00", b"a\nb", b"x" * 256,
    b"x" * 300, b"table/t-1", b"poker.StartHand", b"\x80" * 10,
)  # fmt: skip


def _varint(value: int) -> bytes:
    value &= 2**64 - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> list[Field] | None:
    """The fields of ``data``, or ``None`` if it is not well-formed protobuf."""
    out: list[Field] = []
    pos = 0
    try:
        while pos < len(data):
            key, pos = _read_varint(data, pos)
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == VARINT:
                value, pos = _read_varint(data, pos)
                out.append((number, wire, value))
            elif wire in (I64, I32):
                size = 8 if wire == I64 else 4
                if pos + size > len(data):
                    return None
                out.append((number, wire, int.from_bytes(data[pos : pos + size], "little")))
                pos += size
            elif wire == LEN:
                size, pos = _read_varint(data, pos)
                if pos + size > len(data):
                    return None
                out.append((number, wire, data[pos : pos + size]))
                pos += size
            else:
                return None  # groups: not produced by proto3 encoders
    except ValueError:
        return None
    return out


def encode(items: list[Field]) -> bytes:
    out = bytearray()
    for number, wire, value in items:
        out += _varint(number << 3 | wire)
        if wire == VARINT:
            out += _varint(int(value) if isinstance(value, int) else len(value))
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            number_value = value if isinstance(value, int) else len(value)
            out += (number_value & (2 ** (8 * size) - 1)).to_bytes(size, "little")
        else:
            raw = value if isinstance(value, bytes) else _varint(value)
            out += _varint(len(raw)) + raw
    return bytes(out)


def _nested_group(depth: int) -> bytes:
    """An unknown field holding ``depth`` nested groups: a parser's recursion limit."""
    return _varint(999 << 3 | SGROUP) * depth + _varint(999 << 3 | EGROUP) * depth


def mutate(data: bytes, rng: random.Random, depth: int = 0) -> bytes:
    """``data`` with one field-level change (a raw byte-level one if it is not protobuf)."""
    items = fields(data)
    if items is None or not items or rng.random() < 0.05:
        return _whole(data, rng)
    i = rng.randrange(len(items))
    number, wire, value = items[i]
    action = rng.randrange(10)
    if action == 0:  # drop
        del items[i]
    elif action == 1:  # twice (a repeated field, or last-one-wins)
        items.insert(i, items[i])
    elif action == 2:  # wrong wire type
        items[i] = (number, rng.choice((VARINT, I64, LEN, I32)), value)
    elif action == 3:  # an unknown field, or a known number out of place
        unknown = rng.choice((rng.randrange(1, 16), 16, 100, 2**29 - 1, number))
        items.insert(i, (unknown, rng.choice((VARINT, LEN, I32)), rng.choice(EDGE_BYTES)))
    elif action == 4:  # reorder
        j = rng.randrange(len(items))
        items[i], items[j] = items[j], items[i]
    elif wire == VARINT or wire in (I64, I32):
        items[i] = (number, wire, rng.choice(EDGE_INTS) if action < 8 else rng.getrandbits(64))
        if action == 9:  # an overlong varint: 10 bytes for a small value
            raw = encode(items[:i])
            rest = encode(items[i + 1 :])
            key = _varint(number << 3 | wire)
            return raw + key + b"\x80" * 9 + b"\x00" + rest
    elif isinstance(value, bytes):
        if action in (5, 6) and depth < 4 and fields(value):
            items[i] = (number, wire, mutate(value, rng, depth + 1))
        elif action == 7:
            items[i] = (number, wire, rng.choice(EDGE_BYTES))
        elif action == 8:
            items[i] = (number, wire, value[: rng.randrange(len(value) + 1)])
        else:
            items[i] = (number, wire, value + _nested_group(rng.choice((1, 50, 120, 300))))
    return encode(items)


def _whole(data: bytes, rng: random.Random) -> bytes:
    """A byte-level change: cut, flip, or a deeply nested unknown field appended."""
    choice = rng.randrange(3)
    if choice == 0 or not data:
        return data + _nested_group(rng.choice((10, 101, 1000)))
    if choice == 1:
        return data[: rng.randrange(len(data))]
    out = bytearray(data)
    out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)
