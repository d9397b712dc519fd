"""The wire decoders as a hub and an endpoint use them, the contract they must keep, and
structure-aware inputs for them (shared by ``make fuzz`` and the suite's hypothesis tests).

The contract (docs/protocol.md): any bytes a peer can send end in a typed object or a
:class:`~ackbus.RemoteProtocolError` carrying a refusal code, never another exception,
and whatever a decoder accepts the runtime can use (a HELLO's names are valid names
again when the hub puts them in a ROUTED notice or an ack group). :func:`check` reads a
multipart the way ``Hub._handle`` and ``Receiving._handle`` do and asserts that.

Inputs: :func:`random_multipart` builds a valid multipart of any command with random
field values; :func:`mutate` changes one thing in it the way a broken or hostile peer
would (a header field of a packed item set to an edge value, a length prefix off by
one, a protobuf field changed by :mod:`protomut`, frames dropped, doubled, swapped or
cut). A multipart travels through libFuzzer as one byte string (:func:`pack` /
:func:`unpack`: any bytes are some multipart).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from typing import Final

import protomut
from ackbus import RemoteProtocolError, envelope_pb2, wire, wire_pb2
from ackbus.core import Identity

LIMITS: Final = wire.Limits(max_message_bytes=4096, max_control_bytes=4096)
"""Small limits, so that inputs of a few KiB reach the TOO_LARGE refusals too."""
CODES: Final = frozenset(
    {"MALFORMED", "BAD_SIGNATURE", "UNSUPPORTED_VERSION", "TOO_LARGE", "UNKNOWN_TYPE"}
)

# --------------------------------------------------------------------------- the readers


def as_hub(frames: Sequence[bytes]) -> object:
    """What ``Hub._handle`` decodes, touching every part it forwards or re-encodes."""
    cmd = wire.decode_command(frames)
    if cmd is wire.Command.MESSAGE:
        out: list[object] = []
        for entry in wire.scan_messages(frames, LIMITS):
            if isinstance(entry, wire.PackedRun):
                out.append((entry.type, entry.recipient, entry.ids, entry.chunk()))
                out.append(entry.stretches([i % 2 for i in range(len(entry.ids))]))
            else:
                out.append((entry.id, entry.type, entry.recipient, entry.kind, entry.frame))
                out.append(entry.size)
                if entry.body_frame is not None:  # forwarded to an older peer: joined
                    out.append(wire.join_body(entry.frame, entry.body_frame))
                if entry.flags & wire.FLAG_ZSTD:  # to a peer that cannot decompress
                    out.append(
                        wire.plain_item(entry.frame, entry.body_frame, LIMITS.max_message_bytes)
                    )
        return out
    if cmd is wire.Command.ACK:
        return [(g.peer, g.ok_ids, g.full) for g in wire.split_acks(frames, LIMITS)]
    if cmd is wire.Command.HEARTBEAT:
        wire.decode_heartbeat(frames)
        return None
    if cmd is wire.Command.HELLO:
        hello = wire.decode_hello(frames, LIMITS)
        version = wire.negotiate(list(hello.versions))
        # What the hub makes of a HELLO must be sendable again: the receiver identity
        # it stamps on ack groups, and the names a ROUTED notice carries.
        identity = wire.encode_identity(hello.identity.service, hello.identity.instance)
        for name in (hello.identity.service, *hello.implements):
            wire.check_name(name, "a name from HELLO")
        return version, identity
    if cmd is wire.Command.BYE:
        return wire.decode_bye(frames, LIMITS)
    if cmd is wire.Command.ADMIN:
        req = wire.decode_admin_request(frames, LIMITS)
        return req.kind, list(req.types), list(req.services), req.lease_ms
    raise RemoteProtocolError(f"{cmd.name} is not a command a hub accepts")


def as_endpoint(frames: Sequence[bytes]) -> object:
    """What ``Receiving._handle`` decodes, envelopes and full acks included."""
    cmd = wire.decode_command(frames)
    if cmd is wire.Command.MESSAGE:
        out: list[object] = []
        for item in wire.decode_messages(frames, LIMITS):
            env = item.envelope()
            sender = Identity(env.sender.service, env.sender.instance)
            out.append((item.peer, sender, dict(env.headers), env.correlation_id, item.body))
            out.append(item.body_buffer())
        return out
    if cmd is wire.Command.ACK:
        return [
            (wire.decode_identity(g.peer), g.ok_ids, wire.ack_replies(g))
            for g in wire.split_acks(frames, LIMITS)
        ]
    if cmd is wire.Command.ROUTED:
        return wire.decode_routed(frames, LIMITS)
    if cmd is wire.Command.HEARTBEAT:
        wire.decode_heartbeat(frames)
        return None
    if cmd is wire.Command.WELCOME:
        welcome = wire.decode_welcome(frames, LIMITS)
        wire.Outbox().limit_batch(welcome.max_batch)
        return welcome
    if cmd is wire.Command.REFUSAL:
        refusal = wire.decode_refusal(frames, LIMITS)
        return (refusal.code, refusal.message_id, str(refusal))
    if cmd is wire.Command.BYE:
        return wire.decode_bye(frames, LIMITS)
    raise RemoteProtocolError(f"{cmd.name} is not a command an endpoint accepts")


def _scan_agrees(frames: Sequence[bytes]) -> None:
    """A hub's scan_messages accepts exactly what decode_messages accepts, error for error."""
    if frames and frames[0] in (wire.MESSAGE_FRAME, wire.BODIES_FRAME):
        try:
            scanned: object = [
                i
                for e in wire.scan_messages(frames, LIMITS)
                for i in (e.ids if isinstance(e, wire.PackedRun) else [e.id])
            ]
        except RemoteProtocolError as exc:
            scanned = (str(exc), exc.code, exc.message_id)
        try:
            decoded: object = [i.id for i in wire.decode_messages(frames, LIMITS)]
        except RemoteProtocolError as exc:
            decoded = (str(exc), exc.code, exc.message_id)
        assert scanned == decoded, (scanned, decoded)


def check(frames: Sequence[bytes]) -> None:
    """The contract, for one multipart, as a hub and as an endpoint read it. Raises
    (AssertionError or the stray exception) when a decoder breaks it."""
    for read in (as_hub, as_endpoint):
        error = refusal(read, frames)
        if error is not None:
            assert error.code in CODES, error.code
            assert not hides_memory_error(error), "a MemoryError became a refusal"
            assert len(wire.refusal_for(error)) == 2  # every refusal can be answered
    _scan_agrees(frames)


def refusal(
    read: Callable[[Sequence[bytes]], object], frames: Sequence[bytes]
) -> RemoteProtocolError | None:
    """The refusal ``read(frames)`` raised, or ``None`` when it accepted them."""
    try:
        read(frames)
    except RemoteProtocolError as exc:
        return exc
    return None


def hides_memory_error(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while handling a MemoryError (a decoder's ``except
    Exception`` turns anything into a refusal: an allocation beyond the fuzzer's cap
    must not pass for a refusal)."""
    inner: BaseException | None = exc
    for _ in range(20):
        if inner is None:
            return False
        if isinstance(inner, MemoryError):
            return True
        inner = inner.__cause__ or inner.__context__
    return False


# --------------------------------------------------------------------------- one string

_LEN: Final = struct.Struct("<H")


def pack(frames: Sequence[bytes]) -> bytes:
    """A multipart as one byte string: per frame a u16 length, then the frame."""
    return b"".join(_LEN.pack(min(len(f), 0xFFFF)) + f[:0xFFFF] for f in frames)


def unpack(data: bytes) -> list[bytes]:
    """:func:`pack` reversed; any bytes are a multipart (a short last frame is cut)."""
    frames: list[bytes] = []
    pos = 0
    while pos + 2 <= len(data) and len(frames) < 300:
        (size,) = _LEN.unpack_from(data, pos)
        frames.append(data[pos + 2 : pos + 2 + size])
        pos += 2 + size
    return frames


# --------------------------------------------------------------------------- valid inputs

TYPES: Final = ("poker.StartHand", "poker.TableState", "ev.Tick", "a.B", "x" * 255)
NAMES: Final = ("table", "table/t-1", "audit", "", "lobby/l-1")


def random_envelope(rng: random.Random) -> bytes:
    env = envelope_pb2.Envelope()
    if rng.random() < 0.8:
        env.sender.service = rng.choice(("lobby", "table", "s" * 40))
        env.sender.instance = rng.choice(("l-1", "", "i" * 32))
    for _ in range(rng.randrange(3)):
        env.headers[rng.choice(("trace", "tenant", "k"))] = rng.choice(("v", "", "7" * 20))
    if rng.random() < 0.3:
        env.correlation_id = rng.randbytes(16)
    if rng.random() < 0.2:
        env.content_encoding = "json"
    return env.SerializeToString()


def random_item(rng: random.Random) -> bytes:
    return wire.encode_message(
        rng.randbytes(16),
        rng.choice(TYPES),
        rng.randbytes(rng.choice((0, 3, 40, 300))),
        envelope=random_envelope(rng) if rng.random() < 0.9 else b"",
        recipient=rng.choice(NAMES),
        kind=rng.choice((wire.KIND_COMMAND, wire.KIND_EVENT)),
        attempt=rng.choice((1, 1, 1, 2, 7)),
        priority=rng.choice((0, 0, 5, -32768, 32767)),
        flags=rng.choice((0, wire.FLAG_REQUEST)),
        created_at_ns=rng.getrandbits(62),
        sent_at_ns=rng.getrandbits(62),
        deadline_ns=rng.choice((0, rng.getrandbits(62))),
    )


def random_split_item(rng: random.Random) -> list[bytes]:
    """An item whose body travels as the next frame (FLAG_BODY_FRAME, protocol version 3):
    the item frame and the body frame; its body compressed (FLAG_ZSTD) one time in three."""
    body = rng.randbytes(rng.choice((0, 3, 40, 300)))
    zipped = rng.random() < 0.3
    if zipped:
        body = wire.compress(body * 3)
    head = wire.pack_item(
        rng.randbytes(16),
        rng.choice(TYPES).encode(),
        rng.choice(NAMES).encode(),
        random_envelope(rng) if rng.random() < 0.9 else b"",
        body,
        rng.choice((wire.KIND_COMMAND, wire.KIND_EVENT)),
        rng.choice((1, 2)),
        0,
        rng.choice((0, wire.FLAG_REQUEST)) | (wire.FLAG_ZSTD if zipped else 0),
        rng.getrandbits(62),
        rng.getrandbits(62),
        0,
        True,
    )
    return [head, body]


def random_zipped_item(rng: random.Random) -> bytes:
    """An item whose body is compressed in it (FLAG_ZSTD)."""
    body = wire.compress(rng.choice(TYPES).encode() * rng.randrange(1, 40))
    return wire.pack_item(
        rng.randbytes(16),
        rng.choice(TYPES).encode(),
        b"",
        random_envelope(rng),
        body,
        wire.KIND_COMMAND,
        1,
        0,
        wire.FLAG_ZSTD,
        1,
        1,
        0,
    )


def random_ack(rng: random.Random) -> bytes:
    ack = envelope_pb2.Ack(message_id=rng.randbytes(16))
    ack.outcome = rng.choice(list(envelope_pb2.Outcome.values()))
    if rng.random() < 0.7:
        ack.receiver.service, ack.receiver.instance = "table", "t-1"
    if rng.random() < 0.4:
        ack.error.type, ack.error.message = "ValueError", "seats"
        ack.error.permanent = rng.random() < 0.5
    if rng.random() < 0.3:
        ack.response, ack.response_type = rng.randbytes(8), "poker.TableState"
    ack.retry_after_ms = rng.choice((0, 250, 2**32 - 1))
    ack.attempt = rng.choice((0, 1, 3))
    return ack.SerializeToString()


def random_hello(rng: random.Random) -> wire_pb2.Hello:
    hello = wire_pb2.Hello(versions=rng.choice(([1], [1, 2], [1, 2, 3], [])))
    hello.identity.service = rng.choice(("table", "lobby", "s" * 255))
    hello.identity.instance = rng.choice(("t-1", ""))
    hello.commands.extend(rng.sample(TYPES, rng.randrange(3)))
    hello.events.extend(rng.sample(TYPES, rng.randrange(2)))
    hello.implements.extend(rng.sample(("poker.Table", "poker.Audit"), rng.randrange(3)))
    hello.heartbeat_ms, hello.max_concurrency = rng.choice((0, 1000)), rng.choice((0, 100))
    hello.max_batch = rng.choice((0, 1, 127, 1000))
    return hello


def random_welcome(rng: random.Random) -> wire_pb2.Welcome:
    welcome = wire_pb2.Welcome(version=1, heartbeat_ms=1000, max_batch=rng.choice((0, 5)))
    welcome.hub.service, welcome.hub.instance = "hub", "h-1"
    return welcome


def random_multipart(rng: random.Random) -> list[bytes]:
    """A valid multipart of a random command, with random field values."""
    cmd = rng.choice(list(wire.Command))
    if cmd is wire.Command.MESSAGE:
        groups = [
            (
                rng.choice((b"", b"origin")),
                [
                    random_zipped_item(rng) if rng.random() < 0.15 else random_item(rng)
                    for _ in range(rng.randint(1, 4))
                ],
            )
            for _ in range(rng.randint(1, 3))
        ]
        if rng.random() < 0.3:  # items as frames of their own
            peer, items = groups[0]
            return [wire.MESSAGE_FRAME, wire.group_frame(len(items), peer), *items]
        if rng.random() < 0.3:  # bodies as frames of their own (protocol version 3)
            peer, items = groups[0]
            frames = [wire.BODIES_FRAME, wire.group_frame(len(items) + 1, peer), *items]
            frames[2:2] = random_split_item(rng)
            return frames
        return wire.encode_messages(groups)
    if cmd is wire.Command.ACK:
        return wire.encode_acks(
            [
                (
                    wire.encode_identity("table", rng.choice(("t-1", ""))),
                    wire.ok_ids_frame([rng.randbytes(16) for _ in range(rng.randrange(4))]),
                    wire.full_acks_frame([random_ack(rng) for _ in range(rng.randrange(3))]),
                )
                for _ in range(rng.randint(1, 3))
            ]
        )
    if cmd is wire.Command.HELLO:
        return wire.encode_hello(random_hello(rng))
    if cmd is wire.Command.WELCOME:
        return wire.encode_welcome(random_welcome(rng))
    if cmd is wire.Command.ROUTED:
        entries = []
        for _ in range(rng.randint(1, 3)):
            targets = tuple(rng.sample(("table", "audit", "lobby/l-1"), rng.randrange(3)))
            implements = tuple(("poker.Audit",) * rng.randrange(2) for _ in targets)
            entries.append(wire.Routed(rng.randbytes(16), targets, implements))
        return wire.encode_routed(entries)
    if cmd is wire.Command.HEARTBEAT:
        return wire.encode_heartbeat()
    if cmd is wire.Command.BYE:
        return wire.encode_bye(rng.choice(("", "closing", "x" * 600)))
    if cmd is wire.Command.ADMIN:
        return wire.encode_admin_request(
            wire_pb2.AdminRequest(
                kind=wire_pb2.AdminRequest.Kind.ValueType(rng.choice((1, 2, 3, 7))),
                types=["poker.*"] * rng.randrange(3),
            )
        )
    if cmd is wire.Command.ADMIN_REPLY:
        traffic = wire_pb2.Traffic(message_id=rng.randbytes(16), type="poker.X", outcome="ok")
        return wire.encode_admin_reply(
            wire_pb2.AdminReply(status_json="{}", traffic=[traffic] * rng.randrange(3))
        )
    return wire.encode_refusal(
        rng.choice(sorted(CODES)), rng.choice(("why", "")), rng.choice((b"", rng.randbytes(16)))
    )


def seeds(count: int = 64) -> list[list[bytes]]:
    """Valid multipart of every command: a starting corpus."""
    rng = random.Random(18)
    out = [random_multipart(rng) for _ in range(count)]
    out += [wire.encode_heartbeat(), [wire.command_frame(wire.Command.HELLO, 2), b""]]
    return out


# --------------------------------------------------------------------------- mutations

ITEM_FIELDS: Final = (  # offset and struct format of each field of an item's header
    (16, "<I"), (20, "B"), (21, "B"), (22, "<h"), (24, "<q"), (32, "<q"), (40, "<q"),
    (48, "B"), (49, "B"), (50, "<I"), (54, "<I"),
)  # fmt: skip
EDGES: Final = (0, 1, 2, 3, 127, 128, 255, 2**15 - 1, 2**16 - 1, 2**31 - 1, 2**32 - 1, -1)

ByteMutator = Callable[[bytes, random.Random], bytes]


def flip(data: bytes, rng: random.Random) -> bytes:
    """A plain byte-level change (libFuzzer's own mutator replaces it under atheris)."""
    if not data:
        return bytes([rng.randrange(256)])
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _packed_items(group: bytes) -> list[tuple[int, int]] | None:
    """``(start, end)`` of each item inside a well-formed packed group frame."""
    if len(group) < 2 or not group[0] & wire.PACKED:
        return None
    pos, spans = 2 + group[1], []
    for _ in range(group[0] & ~wire.PACKED):
        if pos + 4 > len(group):
            return None
        end = pos + 4 + int.from_bytes(group[pos : pos + 4], "little")
        if end > len(group):
            return None
        spans.append((pos + 4, end))
        pos = end
    return spans


def _poke_header(item: bytes, rng: random.Random) -> bytes:
    if len(item) < wire.ITEM_HEADER.size:
        return item
    offset, fmt = rng.choice(ITEM_FIELDS)
    size = struct.calcsize(fmt)
    value = rng.choice(EDGES) % (1 << (8 * size))
    out = bytearray(item)
    out[offset : offset + size] = value.to_bytes(size, "little")
    return bytes(out)


def mutate_item(item: bytes, rng: random.Random, byte_mutate: ByteMutator) -> bytes:
    """One change to a message item: a header field, its envelope's protobuf (lengths
    kept right, so the parser is reached), a name, or raw bytes."""
    try:
        parsed = wire.MessageItem(item, b"", LIMITS)
    except RemoteProtocolError:
        return byte_mutate(item, rng)
    choice = rng.randrange(4)
    if choice == 0:
        return _poke_header(item, rng)
    env, body = parsed.envelope_bytes, parsed.wire_body
    name_end = wire.ITEM_HEADER.size + item[48] + item[49]
    names = item[wire.ITEM_HEADER.size : name_end]
    if choice == 1:
        env = protomut.mutate(env, rng)
    elif choice == 2:
        names = rng.choice((b"a b", b"\xff", b"\x00", b"", b"t\n", names[::-1]))
        tlen = min(len(names), 255)
        head = bytearray(item[: wire.ITEM_HEADER.size])
        head[48], head[49] = tlen, 0
        head[50:58] = struct.pack("<II", len(env), len(body))
        return bytes(head) + names[:tlen] + env + body
    else:
        body = byte_mutate(body, rng)
    head = bytearray(item[: wire.ITEM_HEADER.size])
    head[50:58] = struct.pack("<II", len(env), len(body))
    return bytes(head) + names + env + body


def _mutate_group(group: bytes, rng: random.Random, byte_mutate: ByteMutator) -> bytes:
    spans = _packed_items(group)
    if not spans or rng.random() < 0.25:  # the group's own bytes: count, peer length
        out = bytearray(group or b"\x81")
        at = rng.randrange(min(len(out), 2))
        out[at] = rng.choice((0, 1, 0x7F, 0x80, 0x81, 0xFF, len(group) & 0xFF))
        return bytes(out)
    start, end = rng.choice(spans)
    if rng.random() < 0.2:  # the item's u32 length prefix
        prefix = (end - start + rng.choice((-1, 1, 2**31, -(end - start)))) % 2**32
        return group[: start - 4] + prefix.to_bytes(4, "little") + group[start:]
    item = mutate_item(group[start:end], rng, byte_mutate)
    return group[: start - 4] + len(item).to_bytes(4, "little") + item + group[end:]


def _mutate_full_acks(frame: bytes, rng: random.Random) -> bytes:
    acks, pos = [], 0
    while pos + 4 <= len(frame):
        size = int.from_bytes(frame[pos : pos + 4], "little")
        acks.append(frame[pos + 4 : pos + 4 + size])
        pos += 4 + size
    if not acks:
        return wire.full_acks_frame([protomut.mutate(b"", rng)])
    i = rng.randrange(len(acks))
    acks[i] = protomut.mutate(acks[i], rng)
    return wire.full_acks_frame(acks)


def mutate(frames: list[bytes], rng: random.Random, byte_mutate: ByteMutator = flip) -> list[bytes]:
    """One structured change to a multipart (see the module's docstring)."""
    frames = list(frames) or [wire.MESSAGE_FRAME]
    first = frames[0]
    action = rng.randrange(10)
    i = rng.randrange(len(frames))
    if action == 0:  # frame 0: another command, version or signature
        frames[0] = rng.choice(
            (
                wire.command_frame(rng.choice(list(wire.Command))),
                wire.command_frame(wire.Command.MESSAGE, rng.choice((0, 2, 255))),
                b"AB\x01\x09",
                b"AB\x01",
                b"GET / HTTP/1.1\r\n",
            )
        )
    elif action == 1:  # drop, double or swap frames
        j = rng.randrange(len(frames))
        kind = rng.randrange(3)
        if kind == 0 and len(frames) > 1:
            del frames[i]
        elif kind == 1:
            frames.insert(i, frames[j])
        else:
            frames[i], frames[j] = frames[j], frames[i]
    elif action == 2:  # a frame cut or grown
        frame = frames[i]
        frames[i] = frame[: rng.randrange(len(frame) + 1)] + rng.randbytes(rng.choice((0, 0, 3)))
    elif action == 3:
        frames[i] = byte_mutate(frames[i], rng)
    elif len(frames) < 2:
        frames.append(rng.randbytes(rng.randrange(40)))
    elif first == wire.MESSAGE_FRAME:
        j = rng.randrange(1, len(frames))
        frame = frames[j]
        if _packed_items(frame) is not None or len(frame) < wire.ITEM_HEADER.size:
            frames[j] = _mutate_group(frame, rng, byte_mutate)
        else:
            frames[j] = mutate_item(frame, rng, byte_mutate)
    elif first == wire.ACK_FRAME:
        j = rng.randrange(1, len(frames))
        if j % 3 == 0:
            frames[j] = _mutate_full_acks(frames[j], rng)
        elif j % 3 == 2:
            frames[j] = frames[j][: rng.choice((0, 15, 16, 17, 32))] or rng.randbytes(16)
        else:
            frames[j] = rng.choice((b"", b"\x00", b"\xff", b"\x05table", b"\x01\xff", frames[j]))
    elif first == wire.ROUTED_FRAME:
        j = rng.randrange(1, len(frames))
        frames[j] = _poke_counts(frames[j], rng)
    else:  # HELLO, WELCOME, BYE, REFUSAL: one protobuf field
        frames[1] = protomut.mutate(frames[1], rng)
    return frames


def _poke_counts(frame: bytes, rng: random.Random) -> bytes:
    """A ROUTED frame with one byte (a count or a length, often) set to an edge value."""
    if not frame:
        return bytes([rng.randrange(256)])
    out = bytearray(frame)
    at = rng.choice((16, 17, rng.randrange(len(out)))) % len(out)
    out[at] = rng.choice((0, 1, 2, 32, 0x7F, 0xFF))
    return bytes(out)
