"""The legacy adapters: typed → legacy → typed keeps every field, for every message of
every example schema; every decoder turns any input into a message or a typed error.

Messages are generated from their descriptors (``messages(cls)`` below): every field
is filled — scalars of each wire type, enums, nested messages, repeated fields, maps,
oneofs, proto3 ``optional`` and proto2 presence, Timestamps — with presence fields
sometimes left unset, so both states are covered.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import fuzz_targets
import pytest
from ackbus import Registry, SchemaError, Untyped, envelope_pb2, wire_pb2
from ackbus._types import MessageSpec, Policy
from ackbus.legacy import (
    FieldCase,
    LegacyCodec,
    LegacyFormat,
    LegacyFormatError,
    PayloadFormat,
)
from google.protobuf import descriptor_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from poker import cards_ackbus, lobby_ackbus, table_ackbus, table_pb2

POKER = Registry()
for _module in (cards_ackbus, lobby_ackbus, table_ackbus):
    POKER.update(_module.REGISTRY)

# Beyond the poker schemas: the runtime's own protos (bytes, int64, enums, nested
# identities) and two proto2 descriptors (explicit presence, recursion, defaults).
EXTRA = Registry(
    MessageSpec(cls.DESCRIPTOR.full_name, cls, Policy())
    for cls in (
        envelope_pb2.Envelope,
        envelope_pb2.Ack,
        wire_pb2.Hello,
        wire_pb2.Welcome,
        wire_pb2.Refusal,
        descriptor_pb2.FieldDescriptorProto,
        descriptor_pb2.DescriptorProto,
    )
)
EVERYTHING = Registry()
EVERYTHING.update(POKER)
EVERYTHING.update(EXTRA)
CLASSES = sorted((spec.cls for spec in EVERYTHING), key=lambda c: c.DESCRIPTOR.full_name)

# No deadline: under load (2 shared cores) single examples took 250-510 ms and failed the
# default 200 ms deadline, 7 tests in one full run; the example counts bound the time.
PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------- strategies

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_MAX_DEPTH = 2


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        return st.integers(lo, hi)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=12)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=12)
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=False)
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.floats(allow_nan=False, width=32)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    raise AssertionError(f"no strategy for field type {t} ({field.full_name})")


def _timestamp() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    return st.builds(
        timestamp_pb2.Timestamp,
        seconds=st.integers(-62_135_596_800, 253_402_300_799),  # 0001-01-01 .. 9999-12-31
        nanos=st.integers(0, 999_999_999),
    )


def messages(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Message]:
    """Instances of ``cls`` with every field filled (presence fields sometimes unset)."""
    if cls is timestamp_pb2.Timestamp:
        return _timestamp()

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        desc: Descriptor = msg.DESCRIPTOR
        for oneof in desc.oneofs:
            if getattr(oneof, "is_synthetic", False) or len(oneof.fields) == 1:
                continue  # a proto3 `optional`: handled as a presence field below
            choice = draw(st.sampled_from([None, *oneof.fields]))
            if choice is not None:
                _set(draw, msg, choice, depth, force=True)
        for field in desc.fields:
            oneof = field.containing_oneof
            if oneof is not None and len(oneof.fields) > 1:
                continue
            _set(draw, msg, field, depth, force=False)
        return msg

    return build()


def _sub(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Message]:
    return messages(field.message_type._concrete_class, depth + 1)


def _set(draw: st.DrawFn, msg: Message, field: FieldDescriptor, depth: int, force: bool) -> None:
    name = field.name
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    if is_message and depth >= _MAX_DEPTH and not field.message_type.GetOptions().map_entry:
        return
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_f = field.message_type.fields_by_name["key"]
        val_f = field.message_type.fields_by_name["value"]
        keys = draw(st.lists(_scalar(key_f), max_size=3, unique=True))
        target = getattr(msg, name)
        for key in keys:
            if val_f.type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(draw(_sub(val_f, depth)))
            else:
                target[key] = draw(_scalar(val_f))
        return
    if field.is_repeated:
        target = getattr(msg, name)
        if is_message:
            for item in draw(st.lists(_sub(field, depth), max_size=2)):
                target.add().CopyFrom(item)
        else:
            target.extend(draw(st.lists(_scalar(field), max_size=3)))
        return
    if field.has_presence and not force and not draw(st.booleans()):
        return  # leave it unset: absence must survive the round trip too
    if is_message:
        getattr(msg, name).CopyFrom(draw(_sub(field, depth)))
    else:
        setattr(msg, name, draw(_scalar(field)))


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.DESCRIPTOR.full_name)
def test_the_strategy_fills_every_field(cls: type[Message]) -> None:
    """Guards the round-trip tests: a strategy that left fields empty would make them
    pass without proving anything."""
    seen: set[str] = set()

    @settings(max_examples=60, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(msg=messages(cls))
    def collect(msg: Message) -> None:
        seen.update(f.name for f, _ in msg.ListFields())

    collect()
    assert seen == {f.name for f in cls.DESCRIPTOR.fields}


def _ids() -> list[str]:
    return [c.DESCRIPTOR.full_name for c in CLASSES]


@pytest.mark.parametrize("cls", CLASSES, ids=_ids())
@pytest.mark.parametrize("case", list(FieldCase))
@PROPERTY
@given(data=st.data())
def test_envelope_round_trip_keeps_every_field(
    cls: type[Message], case: FieldCase, data: st.DataObject
) -> None:
    codec = LegacyCodec(EVERYTHING, field_case=case, sender="lobby-1")
    msg = data.draw(messages(cls))
    when = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    frame = codec.encode_envelope(msg, message_id="guid-1", timestamp=when)
    back = codec.decode_envelope(frame)
    assert back.message == msg
    assert (back.message_id, back.sender, back.timestamp) == ("guid-1", "lobby-1", when)
    spec = EVERYTHING.for_class(cls)
    assert spec is not None
    assert back.type_name == (spec.legacy_name or spec.full_name)
    assert set(json.loads(frame)) == {"MessageId", "Type", "SenderId", "Timestamp", "Payload"}


@pytest.mark.parametrize("cls", CLASSES, ids=_ids())
@pytest.mark.parametrize("payload", list(PayloadFormat))
@PROPERTY
@given(data=st.data())
def test_topic_frames_round_trip_keeps_every_field(
    cls: type[Message], payload: PayloadFormat, data: st.DataObject
) -> None:
    codec = LegacyCodec(EVERYTHING, field_case=FieldCase.PASCAL)
    msg = data.draw(messages(cls))
    frames = codec.encode_frames(msg, payload)
    assert len(frames) == 2
    assert codec.decode_frames(frames, payload).message == msg


@pytest.mark.parametrize("cls", CLASSES, ids=_ids())
@PROPERTY
@given(data=st.data())
def test_dict_round_trip_keeps_every_field(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(messages(cls))
    for case in FieldCase:
        codec = LegacyCodec(EVERYTHING, field_case=case)
        as_dict = codec.to_dict(msg)
        json.dumps(as_dict)  # JSON-able
        assert codec.from_dict(cls.DESCRIPTOR.full_name, as_dict) == msg
        # and read back by a codec that writes another case: reading takes any case
        other = LegacyCodec(EVERYTHING, field_case=FieldCase.SNAKE)
        assert other.from_dict(cls.DESCRIPTOR.full_name, as_dict) == msg


def test_field_names_follow_the_case_and_map_keys_stay_data() -> None:
    hand = table_pb2.DealCards.Hand(cards=[{"suit": "HEARTS", "rank": 14}])
    msg = table_pb2.DealCards(table_id="t1", hands={"player_one": hand})
    pascal = LegacyCodec(POKER, field_case=FieldCase.PASCAL).to_dict(msg)
    assert pascal == {
        "TableId": "t1",
        "Hands": {"player_one": {"Cards": [{"Suit": "HEARTS", "Rank": 14}]}},
    }
    assert LegacyCodec(POKER).to_dict(msg)["tableId"] == "t1"
    assert LegacyCodec(POKER, field_case=FieldCase.SNAKE).to_dict(msg)["table_id"] == "t1"


def test_a_csharp_envelope_reads_as_the_typed_message() -> None:
    """What a NetMQ-era service writes: PascalCase everywhere, a .NET timestamp with an
    offset, keys in any case (Json.NET reads them case-insensitively)."""
    raw = (
        b'{"messageId": "8d7e3a9c-0000-4000-8000-000000000001", "TYPE": "StartHand",'
        b' "SenderId": "Lobby", "Timestamp": "2024-05-01T14:00:00.5+02:00",'
        b' "Payload": {"TableId": "t7", "Seats": 6, "Blinds": {"Small": 5, "Big": "10"},'
        b' "StartAt": "2024-05-01T12:00:00Z"}}'
    )
    got = LegacyCodec(POKER).decode_envelope(raw)
    assert got.message == table_pb2.StartHand(
        table_id="t7",
        seats=6,
        blinds=table_pb2.Blinds(small=5, big=10),
        start_at=timestamp_pb2.Timestamp(seconds=1714564800),
    )
    assert got.type_name == "StartHand"
    assert got.full_name == "poker.StartHand"
    assert got.timestamp == datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert got.sender == "Lobby"


def test_untyped_only_when_allowed() -> None:
    raw = b'{"Type": "MessageType", "Payload": {"Data": "payload"}}'
    with pytest.raises(SchemaError, match="MessageType"):
        LegacyCodec(POKER).decode_envelope(raw)
    got = LegacyCodec(POKER, allow_untyped=True).decode_envelope(raw)
    assert got.message == Untyped("MessageType", {"Data": "payload"})
    assert got.message_id == ""
    assert got.timestamp is None
    # an untyped message encodes with its name and payload untouched
    codec = LegacyCodec(POKER, allow_untyped=True)
    again = codec.decode_envelope(codec.encode_envelope(got.message))
    assert again.message == got.message


def test_untyped_of_a_known_name_is_encoded_typed() -> None:
    codec = LegacyCodec(POKER, field_case=FieldCase.PASCAL)
    env = json.loads(codec.encode_envelope(Untyped("poker.StartHand", {"table_id": "t"})))
    assert (env["Type"], env["Payload"]) == ("StartHand", {"TableId": "t"})
    frames = codec.encode_frames(Untyped("StartHand", {"seats": 3}), PayloadFormat.PROTOBUF)
    assert frames == [b"StartHand", table_pb2.StartHand(seats=3).SerializeToString()]
    with pytest.raises(SchemaError, match="seats"):
        codec.to_dict(Untyped("StartHand", {"seats": "many"}))
    with pytest.raises(SchemaError, match="Nope"):
        LegacyCodec(POKER, allow_untyped=True).encode_frames(
            Untyped("Nope", {}), PayloadFormat.PROTOBUF
        )


def test_a_payload_that_is_not_json_able_is_a_schema_error() -> None:
    codec = LegacyCodec(POKER, allow_untyped=True)
    with pytest.raises(SchemaError, match="not JSON-able"):
        codec.encode_envelope(Untyped("Odd", {"x": object()}))
    with pytest.raises(SchemaError, match="not JSON-able"):
        codec.encode(Untyped("Odd", {"x": {1, 2}}), LegacyFormat.TOPIC_JSON)


def test_the_envelope_format_reads_one_frame_or_topic_and_envelope() -> None:
    codec = LegacyCodec(POKER)
    msg = table_pb2.StartHand(table_id="t")
    [frame] = codec.encode(msg, LegacyFormat.ENVELOPE, message_id="m")
    assert codec.decode([frame], LegacyFormat.ENVELOPE).message == msg
    assert codec.decode([b"any topic", frame], LegacyFormat.ENVELOPE).message_id == "m"
    with pytest.raises(LegacyFormatError, match="3 frames"):
        codec.decode([b"a", b"b", frame], LegacyFormat.ENVELOPE)
    with pytest.raises(LegacyFormatError, match="0 frames"):
        codec.decode([], LegacyFormat.ENVELOPE)


def test_topics_map_both_ways() -> None:
    codec = LegacyCodec(POKER, topics={"table.events.started": "HandStarted"})
    msg = table_pb2.HandStarted(table_id="t", hand_number=3)
    frames = codec.encode_frames(msg, PayloadFormat.JSON)
    assert frames[0] == b"table.events.started"
    got = codec.decode_frames(frames, PayloadFormat.JSON)
    assert (got.message, got.type_name) == (msg, "table.events.started")


def test_unknown_fields_refused_or_ignored_by_choice() -> None:
    raw = b'{"Type": "StartHand", "Payload": {"TableId": "t", "Colour": "red"}}'
    with pytest.raises(LegacyFormatError, match="Colour") as info:
        LegacyCodec(POKER).decode_envelope(raw)
    assert info.value.type_name == "StartHand"
    got = LegacyCodec(POKER, ignore_unknown_fields=True).decode_envelope(raw)
    assert got.message == table_pb2.StartHand(table_id="t")


def test_double_encoded_payload_is_read() -> None:
    raw = json.dumps({"Type": "StartHand", "Payload": json.dumps({"seats": 2})}).encode()
    assert LegacyCodec(POKER).decode_envelope(raw).message == table_pb2.StartHand(seats=2)


# ---------------------------------------------------------------------- malformed input

MALFORMED = [
    (b"", "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"Payload": {}}', "Type"),
    (b'{"Type": 7}', "Type"),
    (b'{"Type": "StartHand", "MessageId": [1]}', "MessageId"),
    (b'{"Type": "StartHand", "SenderId": 3}', "SenderId"),
    (b'{"Type": "StartHand", "Timestamp": "yesterday"}', "Timestamp"),
    (b'{"Type": "StartHand", "Timestamp": 1e300}', "Timestamp"),
    (b'{"Type": "StartHand", "Timestamp": true}', "Timestamp"),
    (b'{"Type": "StartHand", "Payload": [1]}', "Payload"),
    (b'{"Type": "StartHand", "Payload": "not json"}', "Payload"),
    (b'{"Type": "StartHand", "Payload": {"seats": -1}}', "poker.StartHand"),
    (b'{"Type": "StartHand", "Payload": {"blinds": 5}}', "poker.StartHand"),
    (b'{"Type": "StartHand", "Payload": {"startAt": "noon"}}', "poker.StartHand"),
    (b"[" * 100_000 + b"]" * 100_000, "deeply"),
    (b'{"Type": "StartHand", "Payload": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001, "deeply"),
]


@pytest.mark.parametrize(("raw", "why"), MALFORMED)
def test_malformed_envelopes_give_a_legacy_format_error(raw: bytes, why: str) -> None:
    with pytest.raises(LegacyFormatError, match=why) as info:
        LegacyCodec(POKER).decode_envelope(raw)
    assert info.value.code == "MALFORMED"


def test_oversized_input_is_refused_before_parsing() -> None:
    codec = LegacyCodec(POKER, max_bytes=64)
    with pytest.raises(LegacyFormatError, match="exceeds"):
        codec.decode_envelope(b'{"Type": "StartHand", "Payload": {"tableId": "' + b"x" * 64)
    with pytest.raises(LegacyFormatError, match="exceeds"):
        codec.decode_frames([b"StartHand", b"\x00" * 65], PayloadFormat.PROTOBUF)


@pytest.mark.parametrize(
    ("frames", "payload", "error", "why"),
    [
        ([b"StartHand"], PayloadFormat.JSON, LegacyFormatError, "2|frames"),
        ([b"a", b"b", b"c"], PayloadFormat.JSON, LegacyFormatError, "frames"),
        ([b"\xff", b"{}"], PayloadFormat.JSON, LegacyFormatError, "UTF-8"),
        ([b"", b"{}"], PayloadFormat.JSON, LegacyFormatError, "empty topic"),
        ([b"StartHand", b"[]"], PayloadFormat.JSON, LegacyFormatError, "object"),
        ([b"StartHand", b"\x0a\xff"], PayloadFormat.PROTOBUF, LegacyFormatError, "undecodable"),
        ([b"Who", b"{}"], PayloadFormat.JSON, SchemaError, "Who"),
        ([b"Who", b""], PayloadFormat.PROTOBUF, SchemaError, "Who"),
    ],
)
def test_malformed_frames_give_typed_errors(
    frames: list[bytes], payload: PayloadFormat, error: type[Exception], why: str
) -> None:
    with pytest.raises(error, match=why):
        LegacyCodec(POKER).decode_frames(frames, payload)


# ---------------------------------------------------------------------- fuzz

TYPE_NAMES = [*sorted({n for s in POKER for n in (s.full_name, s.legacy_name) if n}), "Nope"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
ENVELOPE_KEYS = st.sampled_from(["MessageId", "Type", "SenderId", "Timestamp", "Payload", "x"])


def _decodes_or_typed_error(fn: Any, *args: Any) -> None:
    with contextlib.suppress(LegacyFormatError, SchemaError):
        fn(*args)


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.integers(0, 2**64 - 1), st.integers(1, 4))
def test_the_legacy_fuzz_targets_inputs(seed: int, steps: int) -> None:
    """``make fuzz``'s legacy target, bounded: encoded messages of every format changed
    value by value (edge numbers, times that are not times, keys in other cases, deep
    nesting, payloads encoded twice), decoded and used as the bridge uses them."""
    fuzz_targets.exercise("legacy", seed, steps)


@pytest.mark.parametrize("payload", ['"\\ud800"', '"{\\"tableId\\": \\"\\ud800\\"}"'])
def test_a_payload_encoded_twice_with_a_lone_surrogate_is_a_format_error(payload: str) -> None:
    """Found by fuzzing: "Payload": "\\ud800" raised UnicodeEncodeError (re-encoding the
    string to parse it again), which the bridge's reader loop (``Bridge._read``) does not
    catch: it catches LegacyFormatError and SchemaError."""
    raw = ('{"Type": "poker.StartHand", "Payload": ' + payload + "}").encode()
    with pytest.raises(LegacyFormatError):
        LegacyCodec(POKER).decode_envelope(raw)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzz_envelope_any_bytes(raw: bytes) -> None:
    _decodes_or_typed_error(LegacyCodec(POKER).decode_envelope, raw)


@FUZZ
@given(
    env=st.dictionaries(ENVELOPE_KEYS, JSON_VALUES),
    type_name=st.sampled_from(TYPE_NAMES),
    payload=st.dictionaries(st.sampled_from(["tableId", "Seats", "blinds", "q"]), JSON_VALUES),
    untyped=st.booleans(),
)
def test_fuzz_envelope_json_shaped(
    env: dict[str, Any], type_name: str, payload: dict[str, Any], untyped: bool
) -> None:
    """Well-formed JSON with the right keys and wrong values reaches the deep paths."""
    env.setdefault("Type", type_name)
    env.setdefault("Payload", payload)
    raw = json.dumps(env).encode()
    _decodes_or_typed_error(LegacyCodec(POKER, allow_untyped=untyped).decode_envelope, raw)


@FUZZ
@given(
    frames=st.lists(st.binary(max_size=40), max_size=3)
    | st.tuples(st.sampled_from([t.encode() for t in TYPE_NAMES]), st.binary(max_size=60)).map(
        list
    ),
    payload=st.sampled_from(list(PayloadFormat)),
)
def test_fuzz_frames_any_bytes(frames: list[bytes], payload: PayloadFormat) -> None:
    _decodes_or_typed_error(LegacyCodec(POKER).decode_frames, frames, payload)


@FUZZ
@given(data=st.data(), cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_fuzz_mutated_valid_envelopes(data: st.DataObject, cut: int, flip: int) -> None:
    cls = data.draw(st.sampled_from([s.cls for s in POKER]))
    raw = bytearray(LegacyCodec(POKER).encode_envelope(data.draw(messages(cls))))
    raw[flip % len(raw)] ^= 1 << (flip % 8)
    _decodes_or_typed_error(LegacyCodec(POKER).decode_envelope, bytes(raw[: cut % (len(raw) + 1)]))
