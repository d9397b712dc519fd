"""The legacy codecs as the bridge uses them, their contract, and inputs for them.

The contract (docs/legacy.md): every decoder turns any input into a
:class:`~ackbus.legacy.LegacyMessage`, a :class:`~ackbus.legacy.LegacyFormatError` or a
:class:`~ackbus.SchemaError`, never another exception; and what it returns the bridge
can send on (a typed message serializes and maps back to JSON, an untyped one encodes
as the endpoint encodes it or raises SchemaError).

An input is one option byte (the :class:`LegacyFormat`, whether untyped messages and
unknown fields are allowed, whether topics are mapped) and a multipart packed as
:func:`wire_targets.pack` packs it. The structured mutations change a JSON value (an
edge number, a string that is no time, deep nesting, a key in another case, a payload
encoded twice), a protobuf payload field by field (:mod:`protomut`), or the topic.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import protomut
import wire_targets as w
from ackbus import LocalProtocolError, Policy, Registry, SchemaError, Untyped
from ackbus._untyped import encode_untyped
from ackbus.legacy import LegacyCodec, LegacyFormat, LegacyFormatError, LegacyMessage
from ackbus.wire import check_name
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from poker import cards_ackbus, lobby_ackbus, table_ackbus

POKER: Final = Registry()
for _module in (cards_ackbus, lobby_ackbus, table_ackbus):
    POKER.update(_module.REGISTRY)
CLASSES: Final = sorted((spec.cls for spec in POKER), key=lambda c: c.DESCRIPTOR.full_name)
TOPICS: Final = {"start": "poker.StartHand", "hands": "HandStarted"}
FORMATS: Final = tuple(LegacyFormat)
_CODECS: dict[int, LegacyCodec] = {}


def codec(options: int) -> LegacyCodec:
    """The codec an option byte names (bits 2-4: untyped allowed, unknown fields
    ignored, topics mapped)."""
    key = options & 0b11100
    found = _CODECS.get(key)
    if found is None:
        found = _CODECS[key] = LegacyCodec(
            POKER,
            allow_untyped=bool(key & 0b100),
            ignore_unknown_fields=bool(key & 0b1000),
            topics=TOPICS if key & 0b10000 else None,
            max_bytes=16 * 1024,
        )
    return found


def check(data: bytes) -> None:
    """The contract for one input (see the module docstring)."""
    if not data:
        return
    c = codec(data[0])
    fmt = FORMATS[data[0] % len(FORMATS)]
    legacy = _decode(c, w.unpack(data[1:]), fmt)
    if not isinstance(legacy, LegacyMessage):
        assert not w.hides_memory_error(legacy), "a MemoryError became a refusal"
        return
    msg = legacy.message
    if isinstance(msg, Untyped):
        with contextlib.suppress(SchemaError):
            encode_untyped(c.registry, msg, None, Policy())
        with contextlib.suppress(LocalProtocolError):  # the name the endpoint sends
            check_name(msg.type_name, "type name")
    else:
        msg.SerializeToString()
        if fmt is not LegacyFormat.TOPIC_PROTOBUF:  # JSON read back maps back to JSON
            c.to_dict(msg)
    assert legacy.type_name
    assert legacy.full_name


def _decode(
    c: LegacyCodec, frames: list[bytes], fmt: LegacyFormat
) -> LegacyMessage | LegacyFormatError | SchemaError:
    try:
        return c.decode(frames, fmt)
    except (LegacyFormatError, SchemaError) as exc:
        return exc


# --------------------------------------------------------------------------- valid inputs


def _scalar(field: Any, rng: random.Random) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FieldDescriptor.TYPE_STRING:
        return rng.choice(("t1", "", "ünï", "x" * 40))
    if t == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.randrange(8))
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice((0.0, 1.5, -2.25))
    if t == FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values])
    unsigned = t in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    )
    return rng.choice((0, 1, 6, 2**31 - 1) if unsigned else (0, 1, -1, 6, -(2**31)))


def random_message(cls: type[Message], rng: random.Random, depth: int = 0) -> Message:
    """An instance of ``cls`` with some fields set (nested messages two levels deep)."""
    msg = cls()
    if isinstance(msg, timestamp_pb2.Timestamp):
        msg.seconds, msg.nanos = rng.choice(((0, 0), (1714564800, 5), (253402300799, 999)))
        return msg
    for field in msg.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        if field.message_type is not None:
            if depth >= 2 or field.message_type.GetOptions().map_entry:
                continue
            sub = getattr(msg, field.name)
            target = sub.add() if field.is_repeated else sub
            target.CopyFrom(random_message(type(target), rng, depth + 1))
        elif field.is_repeated:
            getattr(msg, field.name).extend(_scalar(field, rng) for _ in range(rng.randrange(3)))
        else:
            setattr(msg, field.name, _scalar(field, rng))
    return msg


def random_input(rng: random.Random) -> bytes:
    """A valid legacy multipart of a random format, with its option byte."""
    options = rng.randrange(256)
    c = codec(options)
    fmt = FORMATS[options % len(FORMATS)]
    msg = random_message(rng.choice(CLASSES), rng)
    stamp = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    frames = c.encode(msg, fmt, message_id="m-1", sender="lobby-1", timestamp=stamp)
    return bytes([options]) + w.pack(frames)


def seeds() -> list[bytes]:
    rng = random.Random(5)
    return [random_input(rng) for _ in range(60)]


# --------------------------------------------------------------------------- mutations

JSON_EDGES: Final[tuple[Any, ...]] = (
    None, True, False, 0, -1, 2**31, 2**64, -(2**63) - 1, 10**30, 1e308, -0.0, 0.5, "",
    "x" * 300, "NaN", "Infinity", "-1", "2024-13-01T00:00:00Z", "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00", "2024-05-01T12:00:00+14:00", 1e20, -1e20, [], {}, [None],
    {"": 1}, "ünï", "\ud800",
)  # fmt: skip
KEYS: Final = ("MessageId", "Type", "SenderId", "Timestamp", "Payload", "messageid", "TYPE")


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every node of a JSON value."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _nodes(v, (*path, i))
    return out


def _replace(value: Any, path: Sequence[Any], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


_DEEP: Final = "\x00deep\x00"
"""Stands for a deep nesting in a JSON value until :func:`_dumps` writes it out."""


def mutate_json(value: Any, rng: random.Random) -> Any:
    """One change to a JSON value: a node replaced, a key renamed, deep nesting, a
    value encoded as a string of JSON."""
    path = rng.choice(_nodes(value))
    action = rng.randrange(5)
    if action == 0:
        return _replace(value, path, rng.choice(JSON_EDGES))
    if action == 1 and isinstance(value, dict) and value:  # a key in another case
        old = rng.choice(list(value))
        renamed = {k: v for k, v in value.items() if k != old}
        renamed[rng.choice((old.upper(), old.lower(), rng.choice(KEYS)))] = value[old]
        return renamed
    if action == 2:  # nested deeper than any decoder should recurse
        return _replace(value, path, _DEEP)
    if action == 3:
        return _replace(value, path, json.dumps(_at(value, path)))
    return _replace(value, path, rng.choice((1, "s", [1, "s"], {"tableId": 7})))


def dumps_json(value: Any, rng: random.Random) -> bytes:
    """``value`` as JSON text, its deep-nesting marks written out."""
    depth = rng.choice((30, 200, 2000))
    text = json.dumps(value).replace(json.dumps(_DEEP), "[" * depth + "]" * depth)
    return text.encode()


def _at(value: Any, path: Sequence[Any]) -> Any:
    for step in path:
        value = value[step]
    return value


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One structured change to a legacy input (see the module docstring)."""
    if len(data) < 2 or rng.random() < 0.2:
        return random_input(rng)
    options, frames = data[0], w.unpack(data[1:])
    action = rng.randrange(10)
    if action == 0 or not frames:
        options = rng.randrange(256)
    elif action == 1:  # the topic
        names = [n for s in POKER for n in (s.full_name, s.legacy_name) if n]
        frames[0] = rng.choice((*[n.encode() for n in names], b"start", b"\xff", b"", b"a b"))
    else:
        i = rng.randrange(len(frames))
        try:
            value = json.loads(frames[i])
        except (ValueError, RecursionError):
            frames[i] = protomut.mutate(frames[i], rng)
        else:
            try:
                frames[i] = dumps_json(mutate_json(value, rng), rng)
            except (ValueError, RecursionError):
                frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
    return bytes([options]) + w.pack(frames)
