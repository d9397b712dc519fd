"""The targets ``make fuzz`` runs: for each, seeds, the check of one input and a custom
mutator (fuzz/run.py drives them under atheris; the suite's hypothesis tests call the
same checks).

A mutator is made from a byte-level one (libFuzzer's ``atheris.Mutate`` under atheris,
:func:`flip_mutator` elsewhere) and returns ``mutate(data, max_size, seed)``: mostly a
structured change (a field of a frame, a protobuf field, a JSON value, a store column),
sometimes libFuzzer's own byte-level one, so that both kinds of damage are tried.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import legacy_targets
import protomut
import store_targets
import wire_targets as w
from ackbus import wire

ByteMutate = Callable[[bytes, int], bytes]
"""``atheris.Mutate(data, max_size)``: libFuzzer's byte-level mutation."""
Mutator = Callable[[bytes, int, int], bytes]


def flip_mutator(data: bytes, max_size: int) -> bytes:
    """A byte-level mutation for use without libFuzzer (tests)."""
    return w.flip(data, random.Random(len(data)))[:max_size]


@dataclass(frozen=True)
class Target:
    check: Callable[[bytes], None]
    """Raises when a decoder breaks its contract on this input."""
    seeds: Callable[[], list[bytes]]
    mutator: Callable[[ByteMutate], Mutator]


# --------------------------------------------------------------------------- wire


def _check_wire(data: bytes) -> None:
    w.check(w.unpack(data))


def _wire_seeds() -> list[bytes]:
    return [w.pack(frames) for frames in w.seeds()]


def _wire_mutator(byte_mutate: ByteMutate) -> Mutator:
    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        roll = rng.random()
        if roll < 0.15:
            return byte_mutate(data, max_size)
        frames = w.unpack(data)
        if roll < 0.25 or not frames:  # a fresh valid multipart (see _protobuf_mutator)
            frames = w.random_multipart(rng)
        for _ in range(rng.choice((1, 1, 2, 3))):
            frames = w.mutate(frames, rng, lambda b, _: byte_mutate(b, len(b) + 32))
        return w.pack(frames)[:max_size]

    return mutate


# --------------------------------------------------------------------------- protobufs

_PROTOBUFS = ("envelope", "ack", "hello", "welcome", "refusal", "bye")
"""What the first byte of a protobuf input says the rest is."""


def protobuf_frames(kind: int, raw: bytes) -> list[bytes]:
    """A multipart that brings protobuf bytes ``raw`` to the decoder that reads them."""
    name = _PROTOBUFS[kind % len(_PROTOBUFS)]
    if name == "envelope":
        item = wire.encode_message(b"e" * 16, "poker.StartHand", b"\x08\x01", envelope=raw)
        return wire.encode_messages([(b"origin", [item])])
    if name == "ack":
        peer = wire.encode_identity("table", "t-1")
        return wire.encode_acks([(peer, b"", wire.full_acks_frame([raw]))])
    frame0 = {
        "hello": wire.HELLO_FRAME,
        "welcome": wire.WELCOME_FRAME,
        "refusal": wire.REFUSAL_FRAME,
        "bye": wire.BYE_FRAME,
    }[name]
    return [frame0, raw]


def _check_protobuf(data: bytes) -> None:
    if data:
        w.check(protobuf_frames(data[0], data[1:]))


def _random_protobuf(rng: random.Random) -> bytes:
    """A valid protobuf of a random kind, with its kind byte."""
    kind = rng.randrange(len(_PROTOBUFS))
    raw = (
        w.random_envelope,
        w.random_ack,
        lambda r: w.random_hello(r).SerializeToString(),
        lambda r: w.random_welcome(r).SerializeToString(),
        lambda r: wire.encode_refusal("MALFORMED", "why", r.randbytes(16))[1],
        lambda r: wire.encode_bye(r.choice(("", "closing")))[1],
    )[kind](rng)
    return bytes([kind]) + raw


def _protobuf_seeds() -> list[bytes]:
    rng = random.Random(7)
    return [_random_protobuf(rng) for _ in range(48)]


def _protobuf_mutator(byte_mutate: ByteMutate) -> Mutator:
    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        roll = rng.random()
        if roll < 0.15 or not data:
            return byte_mutate(data, max_size)
        if roll < 0.25:  # a fresh valid message: the corpus keeps few of them, since
            data = _random_protobuf(rng)  # most parsing happens in C, uninstrumented
        kind, raw = data[0], data[1:]
        for _ in range(rng.choice((1, 1, 2, 4))):
            raw = protomut.mutate(raw, rng)
        return (bytes([kind]) + raw)[:max_size]

    return mutate


def _structured(mutate: Callable[[bytes, random.Random], bytes]) -> Callable[[ByteMutate], Mutator]:
    """A target's mutator: ``mutate`` mostly, libFuzzer's byte-level mutation sometimes."""

    def make(byte_mutate: ByteMutate) -> Mutator:
        def mutator(data: bytes, max_size: int, seed: int) -> bytes:
            rng = random.Random(seed)
            if rng.random() < 0.15:
                return byte_mutate(data, max_size)
            for _ in range(rng.choice((1, 1, 2, 3))):
                data = mutate(data, rng)
            return data[:max_size]

        return mutator

    return make


TARGETS: dict[str, Target] = {
    "wire": Target(_check_wire, _wire_seeds, _wire_mutator),
    "protobuf": Target(_check_protobuf, _protobuf_seeds, _protobuf_mutator),
    "legacy": Target(
        legacy_targets.check, legacy_targets.seeds, _structured(legacy_targets.mutate)
    ),
    "store": Target(store_targets.check, store_targets.seeds, _structured(store_targets.mutate)),
}


def names() -> str:
    return ", ".join(TARGETS)


_SEEDS: dict[str, list[bytes]] = {}


def exercise(name: str, seed: int, steps: int) -> bytes:
    """Check one input made as ``make fuzz`` makes them, from a seed and ``steps`` of the
    target's mutator (byte-level changes by :func:`flip_mutator`): the suite's
    hypothesis tests run each target this way, bounded. Returns the input."""
    target = TARGETS[name]
    seeds = _SEEDS.get(name) or _SEEDS.setdefault(name, target.seeds())
    rng = random.Random(seed)
    data = rng.choice(seeds)
    mutate = target.mutator(flip_mutator)
    for _ in range(steps):
        data = mutate(data, 65536, rng.getrandbits(32))
    target.check(data)
    return data
