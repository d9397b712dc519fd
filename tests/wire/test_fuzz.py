"""Fuzz every decoder: whatever bytes arrive, the result is a typed object or a
RemoteProtocolError, never another exception (no atheris needed: hypothesis drives
random frames, truncations, bit flips and frame shuffles of valid multiparts)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from ackbus import RemoteProtocolError, envelope_pb2, wire, wire_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LIMITS = wire.Limits(max_message_bytes=4096, max_control_bytes=4096)


def decode_all(frames: Sequence[bytes]) -> object:
    """Dispatch like a hub or endpoint would, and touch every lazy part."""
    cmd = wire.decode_command(frames)
    if cmd is wire.Command.MESSAGE:
        scanned = scan(frames)  # the hub's reading agrees, error for error
        error: RemoteProtocolError | None = None
        try:
            items = wire.decode_messages(frames, LIMITS)
        except RemoteProtocolError as exc:
            error = exc
        if error is not None:
            assert scanned == (str(error), error.code, error.message_id)
            raise error
        assert scanned == [i.id for i in items]
        return [(i.envelope(), i.body) for i in items]
    if cmd is wire.Command.ACK:
        return [g.full_acks() for g in wire.split_acks(frames, LIMITS)]
    decoders: dict[wire.Command, Callable[..., object]] = {
        wire.Command.HELLO: wire.decode_hello,
        wire.Command.WELCOME: wire.decode_welcome,
        wire.Command.ROUTED: wire.decode_routed,
        wire.Command.BYE: wire.decode_bye,
        wire.Command.REFUSAL: wire.decode_refusal,
    }
    if cmd is wire.Command.HEARTBEAT:
        return wire.decode_heartbeat(frames)
    return decoders[cmd](frames, LIMITS)


def scan(frames: Sequence[bytes]) -> object:
    """The ids a hub's scan_messages finds, or the error it raises."""
    try:
        entries = wire.scan_messages(frames, LIMITS)
    except RemoteProtocolError as exc:
        return (str(exc), exc.code, exc.message_id)
    return [i for e in entries for i in (e.ids if isinstance(e, wire.PackedRun) else [e.id])]


CODES = {"MALFORMED", "BAD_SIGNATURE", "UNSUPPORTED_VERSION", "TOO_LARGE", "UNKNOWN_TYPE"}


def must_not_crash(frames: Sequence[bytes]) -> None:
    error: RemoteProtocolError | None = None
    try:
        decode_all(frames)
    except RemoteProtocolError as exc:
        error = exc
    if error is not None:
        assert error.code in CODES
        wire.refusal_for(error)  # every error can be answered


ENV = envelope_pb2.Envelope(
    sender=envelope_pb2.Identity(service="s", instance="i"), headers={"k": "v"}
).SerializeToString()
ITEM = wire.encode_message(b"i" * 16, "pkg.Type", b"body" * 3, envelope=ENV, recipient="svc")
FULL_ACK = envelope_pb2.Ack(message_id=b"a" * 16, outcome=envelope_pb2.REJECTED).SerializeToString()
RETRY = wire.encode_message(b"r" * 16, "pkg.Type", b"", envelope=ENV, attempt=2)
EVENT = wire.encode_message(b"e" * 16, "pkg.Ev", b"", kind=wire.KIND_EVENT)
VALID: list[list[bytes]] = [
    wire.encode_messages([(b"", [ITEM, ITEM]), (b"origin", [ITEM])]),  # packed
    wire.encode_messages([(b"", [ITEM, RETRY, ITEM, EVENT, ITEM])]),  # runs and items
    [wire.MESSAGE_FRAME, wire.group_frame(2, b"o"), ITEM, ITEM],  # items as frames
    wire.encode_acks([(b"p", wire.ok_ids_frame([b"x" * 16]), wire.full_acks_frame([FULL_ACK]))]),
    wire.encode_hello(
        wire_pb2.Hello(identity=envelope_pb2.Identity(service="s"), commands=["a.B"], versions=[1])
    ),
    wire.encode_welcome(wire_pb2.Welcome(version=1, heartbeat_ms=5)),
    wire.encode_routed([wire.Routed(b"r" * 16, ("svc", "svc/i"))]),
    wire.encode_heartbeat(),
    wire.encode_bye("bye"),
    wire.encode_refusal("MALFORMED", "why", b"m" * 16),
]


def test_valid_multiparts_decode() -> None:
    for frames in VALID:
        decode_all(frames)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_random_frames(frames: list[bytes]) -> None:
    must_not_crash(frames)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.sampled_from(wire.Command),
    st.lists(st.binary(max_size=120), max_size=5),
)
def test_random_frames_behind_valid_command(
    template: list[bytes], cmd: wire.Command, frames: list[bytes]
) -> None:
    must_not_crash([wire.command_frame(cmd), *frames])
    must_not_crash([wire.command_frame(cmd), *template[1:]])  # wrong body for the command


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_bit_flips_and_truncations(template: list[bytes], data: st.DataObject) -> None:
    frames = list(template)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frames) - 1))
        frame = bytearray(frames[i])
        action = data.draw(st.sampled_from(["flip", "poke", "truncate", "extend", "drop", "dup"]))
        if action == "poke" and frame:  # a header byte (a packed item's starts at 6 or 12)
            pos = data.draw(st.integers(0, min(len(frame), 80) - 1))
            frame[pos] = data.draw(st.sampled_from([0, 1, 2, 3, 32, 0x80, 0xFF]))
        elif action == "flip" and frame:
            pos = data.draw(st.integers(0, len(frame) - 1))
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "truncate":
            frame = frame[: data.draw(st.integers(0, len(frame)))]
        elif action == "extend":
            frame += data.draw(st.binary(min_size=1, max_size=20))
        elif action == "drop" and len(frames) > 1:
            del frames[i]
            continue
        elif action == "dup":
            frames.insert(i, bytes(frame))
        frames[i] = bytes(frame)
    must_not_crash(frames)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=wire.ITEM_HEADER.size, max_size=200), st.binary(max_size=255))
def test_random_items_and_groups(item: bytes, peer: bytes) -> None:
    must_not_crash([wire.MESSAGE_FRAME, bytes([1]) + peer, item])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=60))
def test_identity_decoder(raw: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        wire.decode_identity(raw)
