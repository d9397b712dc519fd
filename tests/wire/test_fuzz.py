"""Fuzz every decoder: whatever bytes arrive, the result is a typed object or a
RemoteProtocolError, never another exception. Hypothesis drives random frames,
truncations, bit flips and frame shuffles of valid multiparts, and the structured
mutations ``make fuzz`` runs under atheris (fuzz/wire_targets.py, which also holds the
contract: each multipart read as a hub and as an endpoint read it)."""

from __future__ import annotations

import contextlib
import random

import fuzz_targets
import pytest
import wire_targets
from ackbus import RemoteProtocolError, envelope_pb2, wire, wire_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

must_not_crash = wire_targets.check


ENV = envelope_pb2.Envelope(
    sender=envelope_pb2.Identity(service="s", instance="i"), headers={"k": "v"}
).SerializeToString()
ITEM = wire.encode_message(b"i" * 16, "pkg.Type", b"body" * 3, envelope=ENV, recipient="svc")
FULL_ACK = envelope_pb2.Ack(message_id=b"a" * 16, outcome=envelope_pb2.REJECTED).SerializeToString()
RETRY = wire.encode_message(b"r" * 16, "pkg.Type", b"", envelope=ENV, attempt=2)
EVENT = wire.encode_message(b"e" * 16, "pkg.Ev", b"", kind=wire.KIND_EVENT)
BODY = bytes(range(256)) * 2
SPLIT = wire.pack_item(
    b"s" * 16, b"pkg.Type", b"", ENV, BODY, wire.KIND_COMMAND, 1, 0, 0, 1, 1, 0, True
)  # an item whose body is the next frame (protocol version 3)
ZIPPED = wire.pack_item(
    b"z" * 16, b"pkg.Type", b"", ENV, wire.compress(BODY), wire.KIND_COMMAND, 1, 0,
    wire.FLAG_ZSTD, 1, 1, 0,
)  # fmt: skip
VALID: list[list[bytes]] = [
    wire.encode_messages([(b"", [ITEM, ITEM]), (b"origin", [ITEM])]),  # packed
    wire.encode_messages([(b"", [ITEM, RETRY, ITEM, EVENT, ITEM])]),  # runs and items
    [wire.MESSAGE_FRAME, wire.group_frame(2, b"o"), ITEM, ITEM],  # items as frames
    [wire.BODIES_FRAME, wire.group_frame(3, b"o"), SPLIT, BODY, ITEM, SPLIT, BODY],  # bodies
    wire.encode_messages([(b"", [ITEM, ZIPPED, ITEM])]),  # a compressed body
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
    for frames in VALID + wire_targets.seeds():
        for read in (wire_targets.as_hub, wire_targets.as_endpoint):
            with contextlib.suppress(RemoteProtocolError):  # the other side's commands
                read(frames)
        wire_targets.check(frames)
    assert wire_targets.unpack(wire_targets.pack(VALID[0])) == VALID[0]


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.integers(0, 2**64 - 1), st.integers(1, 6))
def test_structured_mutations(seed: int, steps: int) -> None:
    """A valid multipart changed field by field, as ``make fuzz`` changes them."""
    rng = random.Random(seed)
    frames = wire_targets.random_multipart(rng)
    for _ in range(steps):
        frames = wire_targets.mutate(frames, rng)
    wire_targets.check(frames)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.sampled_from(["wire", "protobuf"]), st.integers(0, 2**64 - 1), st.integers(1, 5))
def test_the_fuzz_targets_inputs(target: str, seed: int, steps: int) -> None:
    """``make fuzz``'s wire and protobuf targets, bounded: their seeds through their own
    mutators (protobufs changed field by field: envelopes, acks, HELLO, WELCOME...)."""
    fuzz_targets.exercise(target, seed, steps)


def test_a_decoded_hello_is_one_the_hub_can_answer() -> None:
    """The contract covers what the hub re-encodes: a HELLO accepted with a service name
    a ROUTED notice cannot carry broke the publishes of the events it subscribed to."""
    hello = wire_pb2.Hello(identity=envelope_pb2.Identity(service="audit service"))
    with pytest.raises(RemoteProtocolError):
        wire_targets.as_hub([wire.HELLO_FRAME, hello.SerializeToString()])


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
