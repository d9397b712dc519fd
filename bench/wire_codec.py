"""Micro benchmark of the wire codec's hot path: operations per second in one process.

What a message costs on each hop: the sender encodes an item and packs it into a batch;
the hub reads the routing header (no protobuf); the receiver also slices the body, and
acks travel as 16-byte ids. For scale, the same message with a fully populated
protobuf envelope serialized and parsed per message.

``.venv/bin/python -m bench.wire_codec`` prints the table; ``run()`` returns it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ackbus import envelope_pb2, wire

BODY = b"b" * 100
ENVELOPE = envelope_pb2.Envelope(
    sender=envelope_pb2.Identity(service="lobby", instance="l-1")
).SerializeToString()
IDS = [i.to_bytes(16, "big") for i in range(64)]


def _rate(fn: Callable[[], object], per_call: int, seconds: float = 0.4) -> float:
    """Items per second of ``fn`` (which handles ``per_call`` items), best of 3."""
    best = 0.0
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while time.perf_counter() < deadline:
            for _ in range(20):
                fn()
            calls += 20
        best = max(best, calls * per_call / (time.perf_counter() - start))
    return best


def run() -> dict[str, float]:
    frames = [
        wire.encode_message(i, "poker.StartHand", BODY, envelope=ENVELOPE, sent_at_ns=1)
        for i in IDS
    ]
    batch = wire.encode_messages([(b"", frames)])
    acks = wire.encode_acks([(b"peer", wire.ok_ids_frame(IDS), b"")])

    def encode() -> None:
        for i in IDS:
            wire.encode_message(i, "poker.StartHand", BODY, envelope=ENVELOPE, sent_at_ns=1)

    def pack() -> None:
        ob = wire.Outbox()
        for f in frames:
            ob.message(f)
        ob.pop()

    def route() -> None:  # what a hub does: command, items' headers, no protobuf
        wire.decode_command(batch)
        for item in wire.decode_messages(batch):
            _ = item.type, item.recipient, item.kind

    def receive() -> None:  # an endpoint: the header plus the body slice
        for item in wire.decode_messages(batch):
            _ = item.body

    def receive_envelope() -> None:  # plus the full envelope, parsed
        for item in wire.decode_messages(batch):
            _ = item.body, item.envelope()

    def ack() -> None:
        ob = wire.Outbox()
        for i in IDS:
            ob.ack(i, b"peer")
        ob.pop()

    def read_acks() -> None:
        for group in wire.split_acks(acks):
            _ = group.ok_ids

    full = envelope_pb2.Envelope(
        id=IDS[0],
        type="poker.StartHand",
        sender=envelope_pb2.Identity(service="lobby", instance="l-1"),
        attempt=1,
        created_at_ns=1,
        sent_at_ns=1,
    )

    def protobuf_envelope() -> None:
        for _ in IDS:
            raw = full.SerializeToString() + BODY
            envelope_pb2.Envelope.FromString(raw[: -len(BODY)])

    return {
        "encode_message": _rate(encode, 64),
        "outbox_pack_64": _rate(pack, 64),
        "hub_route_batch": _rate(route, 64),
        "endpoint_decode": _rate(receive, 64),
        "endpoint_decode_with_envelope": _rate(receive_envelope, 64),
        "ack_pack_64": _rate(ack, 64),
        "ack_split_64": _rate(read_acks, 64),
        "protobuf_envelope_roundtrip": _rate(protobuf_envelope, 64),
    }


def main() -> None:
    print("wire codec, items per second (best of 3), 100-byte bodies, batches of 64")
    for name, rate in run().items():
        print(f"  {name:<32}{rate:>14,.0f}/s  ({1e6 / rate:.2f} µs each)")


if __name__ == "__main__":
    main()
