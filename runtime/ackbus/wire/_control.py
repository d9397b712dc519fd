"""Acknowledgements, routing notices and control commands of wire protocol version 1.

Same rules as :mod:`._codec`: encoders raise LocalProtocolError, decoders raise only
RemoteProtocolError. Acks are batched per peer (compact ids for plain OK outcomes,
serialized ``ackbus.Ack`` for the rest) so a hub can forward them without parsing.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import Message

from .. import envelope_pb2, wire_pb2
from ..errors import LocalProtocolError, RemoteProtocolError
from ._codec import (
    ACK_FRAME,
    ADMIN_FRAME,
    ADMIN_REPLY_FRAME,
    BYE_FRAME,
    DEFAULT_LIMITS,
    HEARTBEAT_FRAME,
    HELLO_FRAME,
    ID_SIZE,
    LIMIT,
    MALFORMED,
    MAX_NAME,
    REFUSAL_FRAME,
    ROUTED_FRAME,
    SUPPORTED_VERSIONS,
    TOO_LARGE,
    UNKNOWN_TYPE,
    UNSUPPORTED_VERSION,
    WELCOME_FRAME,
    Limits,
    _bad,
    _check_name,
    _name,
)

_CODE = wire_pb2.Refusal.Code
_CODE_NAMES: Final = frozenset(_CODE.keys())

# --------------------------------------------------------------------------- ACK batch

_LEN: Final = struct.Struct("<I")


class AckGroup:
    """Acknowledgements for one peer: compact ids (outcome OK, no response) and full
    ``ackbus.Ack`` messages (any other outcome, or carrying a response).

    From an endpoint, ``peer`` is the origin token the message arrived with; from a
    hub, it is the encoded identity of the receiver (see :func:`decode_identity`).
    ``full`` holds the serialized acks; :meth:`full_acks` parses them.
    """

    __slots__ = ("full", "ok_ids", "peer")

    def __init__(self, peer: bytes, ok_ids: list[bytes], full: list[bytes]) -> None:
        self.peer = peer
        self.ok_ids = ok_ids
        self.full = full

    def full_acks(self) -> list[envelope_pb2.Ack]:
        out = []
        for raw in self.full:
            ack = envelope_pb2.Ack()
            try:
                ack.ParseFromString(raw)
            except Exception as exc:
                raise _bad(f"undecodable ack: {exc}") from None
            if len(ack.message_id) != ID_SIZE:
                raise _bad("ack without a 16-byte message id")
            out.append(ack)
        return out


def ok_ids_frame(ids: Sequence[bytes]) -> bytes:
    """The compact-ack frame: message ids back to back."""
    frame = b"".join(ids)
    if len(frame) != ID_SIZE * len(ids):
        raise LocalProtocolError("every acked message id must be 16 bytes")
    return frame


def full_acks_frame(acks: Sequence[bytes]) -> bytes:
    """The full-ack frame: serialized ``ackbus.Ack`` messages, each length-prefixed."""
    parts: list[bytes] = []
    for raw in acks:
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def split_acks(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> list[AckGroup]:
    """The groups of an ACK multipart: structure checked, protobuf left unparsed (a hub
    forwards ``ok_ids``/``full`` frames without reading them)."""
    n = len(frames)
    if n < 4 or (n - 1) % 3:
        raise _bad("ACK needs groups of three frames (peer, ids, full acks)")
    groups: list[AckGroup] = []
    total = 0
    for i in range(1, n, 3):
        peer, ids, full = frames[i], frames[i + 1], frames[i + 2]
        if (
            len(peer) > 2 * MAX_NAME + 1
            or len(ids) % ID_SIZE
            or len(full) > (limits.max_control_bytes)
        ):
            raise _bad("malformed ACK group")
        ok = [ids[j : j + ID_SIZE] for j in range(0, len(ids), ID_SIZE)]
        raws: list[bytes] = []
        pos = 0
        while pos < len(full):
            if pos + 4 > len(full):
                raise _bad("truncated full ack")
            (size,) = _LEN.unpack_from(full, pos)
            pos += 4
            if pos + size > len(full):
                raise _bad("truncated full ack")
            raws.append(full[pos : pos + size])
            pos += size
        total += len(ok) + len(raws)
        if total > limits.max_acks:
            raise _bad(f"more than {limits.max_acks} acks in one ACK", TOO_LARGE)
        groups.append(AckGroup(peer, ok, raws))
    return groups


def encode_acks(groups: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes]:
    """An ACK multipart from ``(peer, ok_ids frame, full acks frame)`` groups."""
    if not groups:
        raise LocalProtocolError("an ACK carries at least one group")
    out = [ACK_FRAME]
    for peer, ids, full in groups:
        if len(ids) % ID_SIZE:
            raise LocalProtocolError("ok ids frame length must be a multiple of 16")
        out += (peer, ids, full)
    return out


# --------------------------------------------------------------------------- identity

_U8: Final = struct.Struct("<B")


def encode_identity(service: str, instance: str) -> bytes:
    """A receiver identity as a hub puts it in an ACK group: u8 length, service, instance."""
    s = service.encode()
    i = instance.encode()
    if not 1 <= len(s) <= MAX_NAME or len(i) > MAX_NAME:
        raise LocalProtocolError(f"invalid identity {service!r}/{instance!r}")
    return bytes((len(s),)) + s + i


def decode_identity(raw: bytes) -> tuple[str, str]:
    """``(service, instance)`` from :func:`encode_identity` bytes."""
    if not raw or not 1 <= raw[0] <= len(raw) - 1:
        raise _bad("malformed identity")
    try:
        return raw[1 : 1 + raw[0]].decode(), raw[1 + raw[0] :].decode()
    except UnicodeDecodeError:
        raise _bad("identity is not UTF-8") from None


# --------------------------------------------------------------------------- ROUTED


@dataclass(frozen=True, slots=True)
class Routed:
    """Where the hub sent one message: ``targets`` names each service (or
    ``service/instance``) it went to; empty means no live instance handles it.
    ``implements`` (empty, or one tuple per target) names the schema services each
    target implements that subscribe to the message's type: how a publisher matches
    an ack from a target against the subscribers its schema declares."""

    message_id: bytes
    targets: tuple[str, ...]
    implements: tuple[tuple[str, ...], ...] = ()

    @property
    def no_route(self) -> bool:
        return not self.targets


def encode_routed(entries: Sequence[Routed]) -> list[bytes]:
    """A ROUTED multipart: per entry, id, u8 target count, then u8-length-prefixed names;
    and, when any target implements a subscribing schema service, a third frame with,
    per entry and target in the same order, a u8 count and u8-length-prefixed names."""
    parts: list[bytes] = []
    implements: list[bytes] = []
    for e in entries:
        if len(e.message_id) != ID_SIZE or len(e.targets) > 255:
            raise LocalProtocolError("routed entry needs a 16-byte id and <= 255 targets")
        if e.implements and len(e.implements) != len(e.targets):
            raise LocalProtocolError("routed implements needs one tuple per target")
        parts.append(e.message_id)
        parts.append(bytes((len(e.targets),)))
        for t in e.targets:
            raw = _check_name(t, "routed target", empty_ok=False)
            parts.append(bytes((len(raw),)))
            parts.append(raw)
        for i in range(len(e.targets)):
            names = e.implements[i] if e.implements else ()
            if len(names) > 255:
                raise LocalProtocolError("a routed target implements <= 255 services")
            implements.append(bytes((len(names),)))
            for name in names:
                raw = _check_name(name, "implemented service", empty_ok=False)
                implements.append(bytes((len(raw),)))
                implements.append(raw)
    if not parts:
        raise LocalProtocolError("ROUTED needs at least one entry")
    if any(e.implements and any(e.implements) for e in entries):
        return [ROUTED_FRAME, b"".join(parts), b"".join(implements)]
    return [ROUTED_FRAME, b"".join(parts)]


def decode_routed(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> list[Routed]:
    if len(frames) not in (2, 3) or not frames[1] or len(frames[1]) > limits.max_control_bytes:
        raise _bad("ROUTED needs one non-empty entries frame (and an optional implements one)")
    if len(frames) == 3 and len(frames[2]) > limits.max_control_bytes:
        raise _bad("ROUTED implements frame too large")
    data = frames[1]
    out: list[Routed] = []
    pos = 0
    while pos < len(data):
        if pos + ID_SIZE + 1 > len(data):
            raise _bad("truncated ROUTED entry")
        mid = data[pos : pos + ID_SIZE]
        count = data[pos + ID_SIZE]
        pos += ID_SIZE + 1
        targets = []
        for _ in range(count):
            if pos >= len(data) or pos + 1 + data[pos] > len(data) or data[pos] == 0:
                raise _bad("truncated ROUTED target", MALFORMED, mid)
            end = pos + 1 + data[pos]
            targets.append(_name(data[pos + 1 : end], "routed target", mid))
            pos = end
        out.append(Routed(mid, tuple(targets)))
    if len(frames) == 3:
        out = _with_implements(out, frames[2])
    return out


def _with_implements(entries: list[Routed], data: bytes) -> list[Routed]:
    """``entries`` with the implemented services of the third ROUTED frame."""
    out: list[Routed] = []
    pos = 0
    for e in entries:
        per_target: list[tuple[str, ...]] = []
        for _ in e.targets:
            if pos >= len(data):
                raise _bad("truncated ROUTED implements", MALFORMED, e.message_id)
            count = data[pos]
            pos += 1
            names = []
            for _ in range(count):
                if pos >= len(data) or pos + 1 + data[pos] > len(data) or data[pos] == 0:
                    raise _bad("truncated ROUTED implemented service", MALFORMED, e.message_id)
                end = pos + 1 + data[pos]
                names.append(_name(data[pos + 1 : end], "implemented service", e.message_id))
                pos = end
            per_target.append(tuple(names))
        out.append(Routed(e.message_id, e.targets, tuple(per_target)))
    if pos != len(data):
        raise _bad("trailing bytes after ROUTED implements")
    return out


# --------------------------------------------------------------------------- control commands


def _control(frame0: bytes, msg: Message) -> list[bytes]:
    try:
        return [frame0, msg.SerializeToString()]
    except Exception as exc:  # e.g. invalid UTF-8 in a string field
        raise LocalProtocolError(f"cannot serialize {type(msg).__name__}: {exc}") from None


def _parse(frames: Sequence[bytes], msg: Message, limits: Limits) -> None:
    name = type(msg).__name__
    if len(frames) != 2:
        raise _bad(f"{name.upper()} needs exactly 2 frames, got {len(frames)}")
    if len(frames[1]) > limits.max_control_bytes:
        raise _bad(f"{name} of {len(frames[1])} bytes is too large", TOO_LARGE)
    try:
        msg.ParseFromString(frames[1])
    except Exception as exc:
        raise _bad(f"undecodable {name}: {exc}") from None


def encode_hello(hello: wire_pb2.Hello) -> list[bytes]:
    _check_name(hello.identity.service, "HELLO service name", empty_ok=False)
    for name in (*hello.commands, *hello.events, *hello.implements):
        _check_name(name, "handled type or implemented service", empty_ok=False)
    return _control(HELLO_FRAME, hello)


MAX_FINGERPRINT = 32
"""Most bytes of one schema fingerprint a HELLO may carry (ackbus sends 8)."""


def decode_hello(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> wire_pb2.Hello:
    """A HELLO, with its identity and handled type names checked.

    The service name and the implemented schema services follow the rules of type
    names (printable, no spaces, 1 to 255 bytes): the hub puts them in ROUTED notices,
    whose encoder refuses anything else (a HELLO as ``"audit service"`` once made every
    publish of the events it subscribed to fail at the hub)."""
    hello = wire_pb2.Hello()
    _parse(frames, hello, limits)
    service = hello.identity.service.encode()
    if not service or len(service) > MAX_NAME:
        raise _bad("HELLO without a valid service name")
    _name(service, "HELLO service name", b"")
    if len(hello.identity.instance.encode()) > MAX_NAME:
        raise _bad("HELLO instance name too long")
    declared = len(hello.commands) + len(hello.events) + len(hello.implements) + len(hello.methods)
    if declared > limits.max_hello_types:
        raise _bad(
            f"HELLO declares {declared} types and services, more than the limit of "
            f"{limits.max_hello_types}",
            TOO_LARGE,
        )
    for what, names in (
        ("handled type", (*hello.commands, *hello.events)),
        ("implemented service", hello.implements),
        ("handled rpc", hello.methods),
    ):
        for name in names:
            _name(name.encode(), what, b"", UNKNOWN_TYPE)
            if not name or len(name.encode()) > MAX_NAME:
                raise _bad(f"invalid {what} {name!r}", UNKNOWN_TYPE)
    if len(hello.fingerprints) > limits.max_hello_types:
        raise _bad(
            f"HELLO announces {len(hello.fingerprints)} fingerprints, more than the limit "
            f"of {limits.max_hello_types}",
            TOO_LARGE,
        )
    for name, fp in hello.fingerprints.items():
        _name(name.encode(), "fingerprinted type", b"", UNKNOWN_TYPE)
        if not name or len(name.encode()) > MAX_NAME or not 0 < len(fp) <= MAX_FINGERPRINT:
            raise _bad(f"invalid fingerprint of {name!r}", UNKNOWN_TYPE)
    return hello


def encode_welcome(welcome: wire_pb2.Welcome) -> list[bytes]:
    return _control(WELCOME_FRAME, welcome)


def decode_welcome(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> wire_pb2.Welcome:
    welcome = wire_pb2.Welcome()
    _parse(frames, welcome, limits)
    if welcome.version not in SUPPORTED_VERSIONS:
        raise _bad(f"WELCOME chose version {welcome.version}", UNSUPPORTED_VERSION)
    return welcome


def encode_bye(reason: str = "") -> list[bytes]:
    return _control(BYE_FRAME, wire_pb2.Bye(reason=reason))


def decode_bye(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> wire_pb2.Bye:
    bye = wire_pb2.Bye()
    _parse(frames, bye, limits)
    return bye


def encode_heartbeat() -> list[bytes]:
    return [HEARTBEAT_FRAME]


def decode_heartbeat(frames: Sequence[bytes]) -> None:
    if len(frames) != 1:
        raise _bad("HEARTBEAT carries no frames after the command frame")


def encode_refusal(code: str, reason: str, message_id: bytes = b"") -> list[bytes]:
    """A REFUSAL; ``code`` is a ``Refusal.Code`` name such as ``"MALFORMED"``."""
    try:
        value = _CODE.Value(code)
    except ValueError:
        raise LocalProtocolError(f"unknown refusal code {code!r}") from None
    # A reason is for humans: keep it short so a refusal never becomes a large frame.
    return _control(
        REFUSAL_FRAME, wire_pb2.Refusal(code=value, reason=reason[:512], message_id=message_id)
    )


def refusal_for(error: RemoteProtocolError) -> list[bytes]:
    """The REFUSAL to send back for a decoding error, in this peer's version: a peer
    speaking another version still reads frame 0 and learns which versions we speak."""
    code = error.code if error.code in _CODE_NAMES else MALFORMED
    return encode_refusal(code, error.reason, error.message_id)


def decode_refusal(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> RemoteProtocolError:
    """A REFUSAL as the error it reports (``code`` is the code's name)."""
    refusal = wire_pb2.Refusal()
    _parse(frames, refusal, limits)
    try:
        code = _CODE.Name(refusal.code)
    except ValueError:
        code = "CODE_UNSPECIFIED"
    return RemoteProtocolError(refusal.reason, code=code, message_id=refusal.message_id)


def encode_admin_request(req: wire_pb2.AdminRequest) -> list[bytes]:
    return _control(ADMIN_FRAME, req)


def decode_admin_request(
    frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS
) -> wire_pb2.AdminRequest:
    req = wire_pb2.AdminRequest()
    _parse(frames, req, limits)
    if len(req.types) + len(req.services) > limits.max_hello_types:
        raise _bad(f"AdminRequest with {len(req.types) + len(req.services)} filters", LIMIT)
    return req


def encode_admin_reply(reply: wire_pb2.AdminReply) -> list[bytes]:
    return _control(ADMIN_REPLY_FRAME, reply)


def decode_admin_reply(
    frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS
) -> wire_pb2.AdminReply:
    reply = wire_pb2.AdminReply()
    _parse(frames, reply, limits)
    return reply


def negotiate(versions: Sequence[int]) -> int:
    """The highest version both sides speak; UNSUPPORTED_VERSION if none."""
    common = set(versions or (1,)) & set(SUPPORTED_VERSIONS)
    if not common:
        raise _bad(
            f"no common protocol version: peer speaks {sorted(versions)}, "
            f"this peer {list(SUPPORTED_VERSIONS)}",
            UNSUPPORTED_VERSION,
        )
    return max(common)
