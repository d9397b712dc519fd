"""Frame encoding and decoding for ackbus wire protocol version 1 (docs/protocol.md).

Everything here is pure: bytes in, typed objects out, no sockets, no clock. Two rules
shape the code:

* Whose fault is it? Encoders raise :class:`LocalProtocolError` when *we* are about to
  send something the protocol forbids; decoders raise :class:`RemoteProtocolError`
  (with a refusal ``code`` and the message id when it could be read) for anything a
  peer sent. A decoder never raises anything else, whatever the bytes: the fuzz tests
  in ``tests/wire`` hold it to that.
* The hot path is a hub forwarding messages and an endpoint reading them, so a message
  item starts with a fixed ``struct`` header the hub reads without touching protobuf;
  the envelope and body are sliced lazily, only when asked for. Frames cost more than
  bytes in Python, so the small items of a group share one frame.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .. import envelope_pb2
from ..errors import LocalProtocolError, RemoteProtocolError

SIGNATURE: Final = b"AB"
FRAME_VERSION: Final = 1
"""The version byte of every multipart's frame 0. Protocol version 2 changed no frame
layout (it adds an envelope field a hub reads as a prefix, :func:`method_prefix`), so
frames keep saying 1 and an old peer reads every multipart of a new one."""
PROTOCOL_VERSION: Final = 3
"""The newest protocol version this peer speaks (HELLO lists, WELCOME chooses): 2 adds
method addressing (docs/protocol.md, "Method addressing"), 3 body frames (a big body
as a frame of its own, "Body frames")."""
SUPPORTED_VERSIONS: Final = (1, 2, 3)
METHOD_VERSION: Final = 2
"""The first protocol version whose hubs route by the rpc a message names."""
BODY_VERSION: Final = 3
"""The first protocol version whose peers take a message's body as a frame of its own
(:data:`FLAG_BODY_FRAME`, in multiparts that start with :data:`BODIES_FRAME`)."""
BODIES_FRAME_VERSION: Final = 2
"""The frame version of a MESSAGE multipart that carries body frames: it tells the
receiving transport to take the frames that follow without copying them."""

KIND_COMMAND: Final = 1
KIND_EVENT: Final = 2
FLAG_REQUEST: Final = 0x01
"""The sender expects a response in the ack (request/reply)."""
FLAG_KEYED: Final = 0x02
"""The item carries an ordering key: the first :data:`KEY_SIZE` bytes of its envelope
region (counted in the envelope length) are the key's 64-bit hash, little-endian and
never 0, which a hub routes by and a receiver admits by without parsing anything."""
FLAG_BODY_FRAME: Final = 0x04
"""The item's body is not in its frame but the next frame of the multipart (protocol
version 3): the item frame ends with its envelope, its body length is the body frame's."""
FLAG_ZSTD: Final = 0x08
"""The item's body is compressed with zstandard (docs/protocol.md, "Compressed
bodies"); its body length is the compressed length. Sent only to a peer that listed
"zstd" in its HELLO (or WELCOME)."""
_KNOWN_FLAGS: Final = FLAG_REQUEST | FLAG_KEYED | FLAG_BODY_FRAME | FLAG_ZSTD
BODY_FRAME_FROM: Final = 64 * 1024
"""Bodies at least this big travel as frames of their own to a peer of protocol version
3: sent and received without a copy, and a hub forwards the very frame it received.
Below it a copy costs less than a frame of its own (the transport's zero-copy
threshold is the same)."""
KEY_SIZE: Final = 8
_KEY: Final = struct.Struct("<Q")
_FLAGS_AT: Final = 16 + 4 + 1

ID_SIZE: Final = 16
MAX_NAME: Final = 255
"""Longest type name, recipient, or group peer token, in UTF-8 bytes."""
MAX_BATCH: Final = 127
"""Most message items in one MESSAGE multipart: as many as one group's count byte
holds (its high bit marks a packed group), because every multipart costs sends,
receives and thread wake-ups to a pipelined sender, the hub and the receiver."""
MAX_ACKS: Final = 256
"""Most acknowledgements (compact and full together) in one ACK multipart."""


class Command(enum.IntEnum):
    """The fourth byte of every multipart's first frame."""

    HELLO = 1
    WELCOME = 2
    MESSAGE = 3
    ACK = 4
    ROUTED = 5
    HEARTBEAT = 6
    BYE = 7
    REFUSAL = 8
    ADMIN = 9
    """An operator's request (``ackbus status``, ``tail``): ``ackbus.AdminRequest``."""
    ADMIN_REPLY = 10
    """A hub's answer to ADMIN: ``ackbus.AdminReply``."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a decoder accepts. A hub and its endpoints should agree; the defaults do."""

    max_message_bytes: int = 16 * 1024 * 1024
    """Largest message item frame (header + names + envelope + body)."""
    max_control_bytes: int = 1024 * 1024
    """Largest HELLO/WELCOME/BYE/REFUSAL/ROUTED/ack frame."""
    max_batch: int = MAX_BATCH
    max_acks: int = MAX_ACKS
    max_hello_types: int = 4096
    """Most command, event and schema-service names one HELLO may declare together."""
    max_instances_per_key: int = 64
    """Most instances registered at once with one CURVE key (a hub with keys): a HELLO
    beyond is refused (LIMIT), so one key, stolen or buggy, cannot take a hub's every
    ``max_peers`` slot. 0: no limit."""

    @property
    def max_frame_bytes(self) -> int:
        """The largest ZeroMQ frame these limits let a peer send: a message item, a
        control frame or a packed run of small items, plus room for headers. Sockets
        that face the network set it as ``ZMQ_MAXMSGSIZE``, so libzmq drops a peer that
        announces a bigger frame before buffering any of it."""
        packed = self.max_batch * PACK_BELOW
        return max(self.max_message_bytes, self.max_control_bytes, packed) + 64 * 1024


DEFAULT_LIMITS: Final = Limits()

MALFORMED: Final = "MALFORMED"
BAD_SIGNATURE: Final = "BAD_SIGNATURE"
UNSUPPORTED_VERSION: Final = "UNSUPPORTED_VERSION"
TOO_LARGE: Final = "TOO_LARGE"
UNKNOWN_TYPE: Final = "UNKNOWN_TYPE"
NOT_REGISTERED: Final = "NOT_REGISTERED"
LIMIT: Final = "LIMIT"
IN_USE: Final = "IN_USE"
UNAUTHORIZED: Final = "UNAUTHORIZED"
"""A hub's capacity is used up (instances per hub): try another hub, or later."""


def _bad(reason: str, code: str = MALFORMED, message_id: bytes = b"") -> RemoteProtocolError:
    return RemoteProtocolError(reason, code=code, message_id=message_id)


# --------------------------------------------------------------------------- command frame


def command_frame(command: Command, version: int = FRAME_VERSION) -> bytes:
    """The 4-byte first frame of a multipart: signature, version, command."""
    return SIGNATURE + bytes((version, command))


_CMD_FRAMES: Final = {command_frame(c): c for c in Command}
BODIES_FRAME: Final = command_frame(Command.MESSAGE, BODIES_FRAME_VERSION)
"""Frame 0 of a MESSAGE multipart carrying at least one body frame (``AB 02 03``)."""
_CMD_FRAMES[BODIES_FRAME] = Command.MESSAGE
HELLO_FRAME: Final = command_frame(Command.HELLO)
WELCOME_FRAME: Final = command_frame(Command.WELCOME)
MESSAGE_FRAME: Final = command_frame(Command.MESSAGE)
ACK_FRAME: Final = command_frame(Command.ACK)
ROUTED_FRAME: Final = command_frame(Command.ROUTED)
HEARTBEAT_FRAME: Final = command_frame(Command.HEARTBEAT)
BYE_FRAME: Final = command_frame(Command.BYE)
REFUSAL_FRAME: Final = command_frame(Command.REFUSAL)
ADMIN_FRAME: Final = command_frame(Command.ADMIN)
ADMIN_REPLY_FRAME: Final = command_frame(Command.ADMIN_REPLY)


def decode_command(frames: Sequence[bytes]) -> Command:
    """The command of a multipart, after checking its signature and version.

    A known frame is one dict lookup; anything else is examined to say precisely
    what is wrong (a peer speaking another version is told which ones we speak).
    """
    if not frames:
        raise _bad("empty multipart")
    first = frames[0]
    cmd = _CMD_FRAMES.get(first) if type(first) is bytes else None
    if cmd is not None:
        return cmd
    try:
        first = bytes(first)
    except Exception:  # not bytes-like at all
        raise _bad("first frame is not bytes") from None
    if len(first) < 4 or first[:2] != SIGNATURE:
        raise _bad(f"no ackbus signature in first frame {first[:8]!r}", BAD_SIGNATURE)
    if first[2] == BODIES_FRAME_VERSION and len(first) == 4:
        raise _bad(f"frame version {BODIES_FRAME_VERSION} is for MESSAGE only, not {first[3]}")
    if first[2] != FRAME_VERSION:
        raise _bad(
            f"protocol version {first[2]} not supported; this peer speaks "
            f"versions {', '.join(map(str, SUPPORTED_VERSIONS))} (frame version "
            f"{FRAME_VERSION})",
            UNSUPPORTED_VERSION,
        )
    if len(first) != 4:
        raise _bad(f"command frame has {len(first)} bytes, expected 4")
    raise _bad(f"unknown command {first[3]}")


# --------------------------------------------------------------------------- message items

ITEM_HEADER: Final = struct.Struct("<16sIBBhqqqBBII")
"""id, attempt, kind, flags, priority, created_at_ns, sent_at_ns, deadline_ns,
type length, recipient length, envelope length, body length (58 bytes)."""
_HDR: Final = ITEM_HEADER.size
_I64: Final = (-(2**63), 2**63 - 1)
BUFFER_VIEW_FROM: Final = 64 * 1024
"""Bodies at least this big are handed to parsers as views (:meth:`MessageItem.body_buffer`)."""

_valid_names: dict[bytes, str] = {}
_NAME_CACHE_MAX: Final = 4096


def _name(raw: bytes, what: str, message_id: bytes, code: str = MALFORMED) -> str:
    """Decode a type name or recipient: UTF-8, printable, no spaces. Cached, since a
    process sees few distinct names and checks them per message."""
    name = _valid_names.get(raw)
    if name is not None:
        return name
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise _bad(f"{what} is not UTF-8", code, message_id) from None
    if not name.isprintable() or " " in name:
        raise _bad(f"{what} {name!r} has spaces or control characters", code, message_id)
    if len(_valid_names) >= _NAME_CACHE_MAX:
        _valid_names.clear()
    _valid_names[raw] = name
    return name


_checked_names: dict[str, bytes] = {}
"""Non-empty names that passed :func:`_check_name`, by their str: a sender checks the
same few type names once per message."""


def _check_name(name: str, what: str, *, empty_ok: bool) -> bytes:
    raw = _checked_names.get(name) if type(name) is str else None
    if raw is not None:
        return raw
    if type(name) is not str:
        raise LocalProtocolError(f"{what} must be str, got {type(name).__name__}")
    try:
        raw = name.encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. from JSON's "\ud800"
        raise LocalProtocolError(f"{what} {name!r} is not UTF-8") from None
    if not raw:
        if empty_ok:
            return raw
        raise LocalProtocolError(f"{what} is empty")
    if raw not in _valid_names:
        if len(raw) > MAX_NAME or not name.isprintable() or " " in name:
            raise LocalProtocolError(f"invalid {what} {name!r} (max {MAX_NAME} bytes, printable)")
        if len(_valid_names) >= _NAME_CACHE_MAX:
            _valid_names.clear()
        _valid_names[raw] = name
    if len(_checked_names) >= _NAME_CACHE_MAX:
        _checked_names.clear()
    _checked_names[name] = raw
    return raw


class MessageItem:
    """One message as it travels: the routing header, read eagerly, and the envelope
    and body, sliced from :attr:`frame` only when asked for.

    :attr:`frame` is the item's bytes, exactly as the sender encoded them; a hub
    forwards them unchanged (a big item is the very frame object it received).
    :attr:`peer` is the group's peer token: empty from an endpoint, the origin's
    route token when a hub delivers it (echo it in the ack).
    """

    __slots__ = (
        "_body_start",
        "_env_start",
        "_max",
        "attempt",
        "body_frame",
        "created_at_ns",
        "deadline_ns",
        "flags",
        "frame",
        "id",
        "key",
        "kind",
        "method",
        "peer",
        "priority",
        "recipient",
        "sent_at_ns",
        "type",
    )

    def __init__(
        self,
        frame: bytes,
        peer: bytes,
        limits: Limits = DEFAULT_LIMITS,
        body_frame: bytes | None = None,
    ) -> None:
        size = len(frame)
        if size < _HDR:
            raise _bad(f"message item of {size} bytes is shorter than its {_HDR}-byte header")
        (
            mid,
            self.attempt,
            kind,
            flags,
            self.priority,
            self.created_at_ns,
            self.sent_at_ns,
            self.deadline_ns,
            tlen,
            rlen,
            elen,
            blen,
        ) = ITEM_HEADER.unpack_from(frame)
        self.id = mid
        if flags & FLAG_BODY_FRAME:
            if body_frame is None:
                raise _bad("message item says its body follows, but none does", MALFORMED, mid)
            if len(body_frame) != blen:
                raise _bad("message body frame is not as long as its header says", MALFORMED, mid)
            size += blen  # the limit is on the whole message
            blen = 0
        elif body_frame is not None:
            raise _bad("message body frame after an item with its body", MALFORMED, mid)
        if size > limits.max_message_bytes:
            raise _bad(
                f"message of {size} bytes exceeds the limit of {limits.max_message_bytes}",
                TOO_LARGE,
                mid,
            )
        if _HDR + tlen + rlen + elen + blen != len(frame):
            raise _bad("message item lengths do not add up to its frame size", MALFORMED, mid)
        if kind != KIND_COMMAND and kind != KIND_EVENT:
            raise _bad(f"unknown message kind {kind}", MALFORMED, mid)
        if flags & ~_KNOWN_FLAGS:
            raise _bad(f"unknown message flags {flags:#x}", MALFORMED, mid)
        if tlen == 0:
            raise _bad("message has no type name", UNKNOWN_TYPE, mid)
        if self.attempt == 0:
            raise _bad("attempt must be >= 1", MALFORMED, mid)
        self.kind = kind
        self.flags = flags
        end = _HDR + tlen
        self.type = _name(frame[_HDR:end], "type name", mid, UNKNOWN_TYPE)
        self.recipient = _name(frame[end : end + rlen], "recipient", mid) if rlen else ""
        self._env_start = end + rlen
        self._body_start = self._env_start + elen
        if flags & FLAG_KEYED:
            if elen < KEY_SIZE:
                raise _bad("keyed message item has no room for its key", MALFORMED, mid)
            (self.key,) = _KEY.unpack_from(frame, self._env_start)
            if not self.key:
                raise _bad("keyed message item with key 0", MALFORMED, mid)
            self._env_start += KEY_SIZE
        else:
            self.key = 0
        # The rpc named by the envelope's first field (protocol version 2), read as a
        # prefix: tag 0x7a (field 15, length-delimited), a varint length, the name.
        at = self._env_start
        if at < self._body_start and frame[at] == _METHOD_TAG:
            self.method = _read_method(frame, at, self._body_start, mid)
        else:
            self.method = ""
        self.frame = frame
        self._max = limits.max_message_bytes
        self.body_frame = body_frame
        """The body, when it travels as a frame of its own (:data:`FLAG_BODY_FRAME`):
        any buffer (``bytes``, or the ``zmq.Frame`` the transport received without a
        copy, which a hub forwards as it is); None when the body is in :attr:`frame`."""
        self.peer = peer

    @property
    def envelope_bytes(self) -> bytes:
        return self.frame[self._env_start : self._body_start]

    @property
    def body(self) -> bytes:
        """The body, decompressed if it travels compressed."""
        if self.flags & FLAG_ZSTD:
            return self._decompressed()
        return self.wire_body

    @property
    def wire_body(self) -> bytes:
        """The body as it travels: compressed if the item is (:data:`FLAG_ZSTD`)."""
        body = self.body_frame
        if body is not None:
            return body if type(body) is bytes else bytes(body)
        return self.frame[self._body_start :]

    @property
    def size(self) -> int:
        """The message's bytes: its item frame and its body frame, if any."""
        body = self.body_frame
        return len(self.frame) + (len(body) if body is not None else 0)

    def body_buffer(self) -> bytes | memoryview:
        """The body for a parser that takes any buffer (protobuf's ``ParseFromString``):
        a view into :attr:`frame` (or the body frame) when the body is big, so it is not
        copied first. A copy of 128 KiB or more is a fresh ``mmap`` with its page
        faults, which cost more than parsing the body."""
        if self.flags & FLAG_ZSTD:
            return self._decompressed()
        body = self.body_frame
        if body is not None:
            return memoryview(body) if len(body) >= BUFFER_VIEW_FROM else bytes(body)
        start = self._body_start
        if len(self.frame) - start < BUFFER_VIEW_FROM:
            return self.frame[start:]
        return memoryview(self.frame)[start:]

    def _decompressed(self) -> bytes:
        """The body of a compressed item, decompressed (within the message limit)."""
        body = self.body_frame
        compressed = body if body is not None else memoryview(self.frame)[self._body_start :]
        return decompress(compressed, self._max, self.id)

    def envelope(self) -> envelope_pb2.Envelope:
        """The full envelope: the envelope frame parsed, with the header's fields
        (id, type, recipient, attempt, kind, priority, timestamps) filled in."""
        env = envelope_pb2.Envelope()
        try:
            env.ParseFromString(self.envelope_bytes)
        except Exception as exc:  # protobuf raises DecodeError, upb sometimes others
            raise _bad(f"undecodable envelope: {exc}", MALFORMED, self.id) from None
        env.id = self.id
        env.type = self.type
        env.recipient = self.recipient
        env.attempt = self.attempt
        env.kind = self.kind
        env.priority = self.priority
        env.created_at_ns = self.created_at_ns
        env.sent_at_ns = self.sent_at_ns
        env.deadline_ns = self.deadline_ns
        env.method = self.method
        return env

    def __repr__(self) -> str:
        return f"<MessageItem {self.type} {self.id.hex()} attempt={self.attempt}>"


def encode_message(
    message_id: bytes,
    type_name: str,
    body: bytes,
    *,
    envelope: bytes = b"",
    recipient: str = "",
    kind: int = KIND_COMMAND,
    attempt: int = 1,
    priority: int = 0,
    flags: int = 0,
    created_at_ns: int = 0,
    sent_at_ns: int = 0,
    deadline_ns: int = 0,
) -> bytes:
    """One message item frame. ``envelope`` is a serialized ``ackbus.Envelope`` that
    need not repeat the header's fields (an endpoint can cache the bytes of its usual
    envelope, which then holds little more than the sender)."""
    tname = _check_name(type_name, "type name", empty_ok=False)
    rname = _check_name(recipient, "recipient", empty_ok=True)
    if type(message_id) is not bytes or len(message_id) != ID_SIZE:
        raise LocalProtocolError(f"message id must be {ID_SIZE} bytes, got {message_id!r}")
    if kind != KIND_COMMAND and kind != KIND_EVENT:
        raise LocalProtocolError(f"unknown message kind {kind}")
    if flags & ~(FLAG_REQUEST | FLAG_KEYED) or not 1 <= attempt < 2**32:
        raise LocalProtocolError(f"invalid flags {flags:#x} or attempt {attempt}")
    return pack_item(
        message_id,
        tname,
        rname,
        envelope,
        body,
        kind,
        attempt,
        priority,
        flags,
        created_at_ns,
        sent_at_ns,
        deadline_ns,
    )


def key_hash(value: str | bytes | int) -> int:
    """The 64-bit hash an ordering key travels as (never 0, which means "no key"):
    stable across processes and versions (BLAKE2b), unlike ``hash()``. A str is
    hashed as its UTF-8 bytes, an int (bool, enum number) as its decimal digits, so
    ``7`` and ``"7"`` are the same key."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, int):
        raw = str(int(value)).encode()
    else:
        raise LocalProtocolError(
            f"an ordering key is a str, bytes or int, got {type(value).__name__}"
        )
    h = int.from_bytes(hashlib.blake2b(raw, digest_size=KEY_SIZE).digest(), "little")
    return h or 1


_METHOD_TAG: Final = 0x7A
"""The first byte of an envelope that names its rpc: ``Envelope.method`` (field 15,
wire type 2) written as the envelope's first field."""
_method_prefixes: dict[str, bytes] = {}


def method_prefix(method: str) -> bytes:
    """The bytes that start an envelope naming rpc ``method`` ("poker.Table/StartHand"):
    ``Envelope.method`` serialized alone, so the envelope stays a valid protobuf (fields
    may come in any order) that a version-1 peer parses and ignores, while a hub reads
    the name at a fixed place. :class:`LocalProtocolError` for a name the wire cannot
    carry (not ``package.Service/Method``, over 255 bytes, spaces)."""
    prefix = _method_prefixes.get(method)
    if prefix is not None:
        return prefix
    raw = _check_name(method, "rpc name", empty_ok=False)
    service, slash, name = method.partition("/")
    if not slash or not service or not name or "/" in name:
        raise LocalProtocolError(f"rpc name {method!r} is not 'package.Service/Method'")
    size = len(raw)
    length = bytes((size,)) if size < 0x80 else bytes((size & 0x7F | 0x80, size >> 7))
    prefix = bytes((_METHOD_TAG,)) + length + raw
    if len(_method_prefixes) >= _NAME_CACHE_MAX:
        _method_prefixes.clear()
    _method_prefixes[method] = prefix
    return prefix


def _read_method(frame: bytes, at: int, end: int, mid: bytes) -> str:
    """The rpc name of an envelope region starting at ``at`` with the method tag."""
    if at + 2 > end:
        raise _bad("envelope cut short in its rpc name", MALFORMED, mid)
    size = frame[at + 1]
    start = at + 2
    if size & 0x80:
        if at + 3 > end or frame[at + 2] > 1:
            raise _bad("rpc name longer than 255 bytes", MALFORMED, mid)
        size = size & 0x7F | frame[at + 2] << 7
        start += 1
    if not size or start + size > end:
        raise _bad("envelope cut short in its rpc name", MALFORMED, mid)
    return _name(frame[start : start + size], "rpc name", mid)


def item_method(frame: bytes) -> str:
    """The rpc an item frame this process encoded names ("" if none)."""
    tlen, rlen, elen = frame[_HDR - 10], frame[_HDR - 9], _U32.unpack_from(frame, _HDR - 8)[0]
    at = _HDR + tlen + rlen + (KEY_SIZE if frame[_FLAGS_AT] & FLAG_KEYED else 0)
    end = _HDR + tlen + rlen + elen
    if at < end and frame[at] == _METHOD_TAG:
        return _read_method(frame, at, end, b"")
    return ""


def keyed_envelope(key: int, envelope: bytes) -> bytes:
    """The envelope region of a keyed item (flag :data:`FLAG_KEYED`): the key's hash,
    then the envelope."""
    return _KEY.pack(key) + envelope


def item_key(frame: bytes) -> int:
    """The ordering key hash of an item frame this process encoded (0: none)."""
    if not frame[_FLAGS_AT] & FLAG_KEYED:
        return 0
    tlen, rlen = frame[_HDR - 10], frame[_HDR - 9]
    return int(_KEY.unpack_from(frame, _HDR + tlen + rlen)[0])


def check_name(name: str, what: str, *, empty_ok: bool = False) -> bytes:
    """A type name or recipient as the wire carries it (UTF-8, printable, no spaces,
    at most 255 bytes); :class:`LocalProtocolError` if it is not one."""
    return _check_name(name, what, empty_ok=empty_ok)


def pack_item(
    message_id: bytes,
    type_name: bytes,
    recipient: bytes,
    envelope: bytes,
    body: bytes,
    kind: int,
    attempt: int,
    priority: int,
    flags: int,
    created_at_ns: int,
    sent_at_ns: int,
    deadline_ns: int,
    split: bool = False,
) -> bytes:
    """:func:`encode_message` without its checks, positional: for a sender that checked
    its names once with :func:`check_name` and makes its ids and kinds itself (the
    endpoint, once per message, where the checks and eleven keyword arguments would be
    a large share of its sending cost). Only the header's ranges are still checked, by
    ``struct``.

    ``split``: the item frame without the body, flagged :data:`FLAG_BODY_FRAME`; the
    body travels as the next frame (``Outbox.message(frame, peer, body)``), so it is
    neither copied here nor by the transport."""
    if split:
        flags |= FLAG_BODY_FRAME
    try:
        head = ITEM_HEADER.pack(
            message_id,
            attempt,
            kind,
            flags,
            priority,
            created_at_ns,
            sent_at_ns,
            deadline_ns,
            len(type_name),
            len(recipient),
            len(envelope),
            len(body),
        )
    except (struct.error, TypeError) as exc:  # priority or a timestamp out of range
        raise LocalProtocolError(f"cannot encode message header: {exc}") from None
    if split:
        return b"".join((head, type_name, recipient, envelope))
    return b"".join((head, type_name, recipient, envelope, body))


def join_body(frame: bytes, body: bytes) -> bytes:
    """One item frame from an item frame flagged :data:`FLAG_BODY_FRAME` and its body:
    what a peer of protocol version 1 or 2 reads (one copy of the body)."""
    flags = frame[_FLAGS_AT]
    return b"".join(
        (frame[:_FLAGS_AT], bytes((flags & ~FLAG_BODY_FRAME,)), frame[_FLAGS_AT + 1 :], body)
    )


_ATTEMPT_AT: Final = 16
_SENT_AT: Final = 16 + 4 + 1 + 1 + 2 + 8
_REATTEMPT: Final = struct.Struct("<I")
_SENT: Final = struct.Struct("<q")


def reattempt(frame: bytes, attempt: int, sent_at_ns: int) -> bytes:
    """A copy of an item frame with a new attempt number and send time: a retry costs
    one copy, not a re-encode."""
    if len(frame) < _HDR or not 1 <= attempt < 2**32 or not _I64[0] <= sent_at_ns <= _I64[1]:
        raise LocalProtocolError("reattempt needs an item frame, attempt >= 1, int64 time")
    out = bytearray(frame)
    _REATTEMPT.pack_into(out, _ATTEMPT_AT, attempt)
    _SENT.pack_into(out, _SENT_AT, sent_at_ns)
    return bytes(out)


# --------------------------------------------------------------------------- zstandard
# Decompressing lives here, beside MessageItem.body, which needs it; compressing and the
# rest of "Compressed bodies" are in _compress.py.


@functools.cache
def _zstd() -> Any:
    """The zstandard module, or None when it is not installed."""
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


@functools.cache
def _decompressor() -> Any:
    return _zstd().ZstdDecompressor()


def decompress(body: bytes | memoryview, limit: int, message_id: bytes = b"") -> bytes:
    """A compressed body, decompressed: at most ``limit`` bytes (TOO_LARGE beyond),
    MALFORMED for anything zstandard does not read, whatever the bytes."""
    zstd = _zstd()
    if zstd is None:
        raise RemoteProtocolError(
            "a compressed body, and this peer has no zstandard (pip install 'ackbus[zstd]')",
            code=MALFORMED,
            message_id=message_id,
        )
    try:
        size = zstd.frame_content_size(body)
    except zstd.ZstdError:
        size = -1
    if size > limit:
        raise RemoteProtocolError(
            f"compressed body of {size} bytes exceeds the limit of {limit}",
            code=TOO_LARGE,
            message_id=message_id,
        )
    try:
        plain = _decompressor().decompress(body, max_output_size=limit)
    except (zstd.ZstdError, ValueError, TypeError) as exc:
        raise RemoteProtocolError(
            f"undecodable compressed body: {exc}", code=MALFORMED, message_id=message_id
        ) from None
    if len(plain) > limit:  # pragma: no cover - max_output_size holds it
        raise RemoteProtocolError("compressed body too large", code=TOO_LARGE)
    return bytes(plain)


# --------------------------------------------------------------------------- MESSAGE batch

PACKED: Final = 0x80
"""Flag in a group frame's first byte: the group's items are inside the frame."""
PACK_BELOW: Final = 16 * 1024
"""Items smaller than this are packed into their group frame; bigger ones travel as
frames of their own (no copy into a batch frame, zero-copy send)."""
_U32: Final = struct.Struct("<I")


def group_frame(count: int, peer: bytes = b"") -> bytes:
    """Opens a group of ``count`` message items that follow as frames of their own."""
    if not 1 <= count <= MAX_BATCH or len(peer) > MAX_NAME:
        raise LocalProtocolError(f"bad group: {count} items, peer of {len(peer)} bytes")
    return bytes((count,)) + peer


def packed_group_head(count: int, peer: bytes) -> bytes:
    """The two bytes that open a packed group frame (the peer follows); unchecked: for
    callers that keep ``count`` and ``peer`` within bounds (:func:`packed_group_frame`,
    the outbox)."""
    return bytes((PACKED | count, len(peer)))


def skip_packed(buf: bytes, pos: int, count: int) -> int:
    """Where the ``count`` length-prefixed items of a packed group that start at ``pos``
    of ``buf`` end; the items must be there (a caller that read or made them)."""
    length_at = _U32.unpack_from
    for _ in range(count):
        pos += 4 + length_at(buf, pos)[0]
    return pos


def packed_group_frame(peer: bytes, items: Sequence[bytes]) -> bytes:
    """A group frame that carries its items: u8 ``0x80 | count``, u8 peer length, peer,
    then per item a u32 length and the item. One frame instead of ``count``: a frame
    costs far more to send and to receive in Python than copying a small item into the
    batch does."""
    count = len(items)
    if not 1 <= count <= MAX_BATCH or len(peer) > MAX_NAME:
        raise LocalProtocolError(f"bad group: {count} items, peer of {len(peer)} bytes")
    pack = _U32.pack
    parts = [packed_group_head(count, peer), peer]
    for item in items:
        parts.append(pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def message_frames(groups: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes]:
    """A MESSAGE multipart from ``(peer, item frames)`` groups: small items packed into
    their group frame, items of ``PACK_BELOW`` bytes or more as frames of their own.
    The caller keeps the total within the batch limit."""
    out = [MESSAGE_FRAME]
    for peer, items in groups:
        run: list[bytes] = []
        for item in items:
            if len(item) < PACK_BELOW:
                run.append(item)
                continue
            if run:
                out.append(packed_group_frame(peer, run))
                run = []
            out.append(bytes((1,)) + peer)
            out.append(item)
        if run:
            out.append(packed_group_frame(peer, run))
    return out


def decode_messages(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> list[MessageItem]:
    """The items of a MESSAGE multipart (frame 0 already checked by decode_command)."""
    items: list[MessageItem] = []
    n = len(frames)
    i = 1
    if n < 2:
        raise _bad("MESSAGE without a group")
    while i < n:
        group = frames[i]
        i += 1
        size = len(group)
        if not size or not 1 <= group[0] & ~PACKED <= limits.max_batch:
            raise _bad("malformed MESSAGE group frame")
        count = group[0] & ~PACKED
        if len(items) + count > limits.max_batch:
            raise _bad(f"MESSAGE carries more than {limits.max_batch} items")
        if group[0] & PACKED:
            if size < 2 or 2 + group[1] > size:
                raise _bad("malformed packed MESSAGE group frame")
            pos = 2 + group[1]
            peer = group[2:pos]
            for _ in range(count):
                if pos + 4 > size:
                    raise _bad("packed MESSAGE group is truncated")
                end = pos + 4 + _U32.unpack_from(group, pos)[0]
                if end > size:
                    raise _bad("packed MESSAGE group is truncated")
                items.append(MessageItem(group[pos + 4 : end], peer, limits))
                pos = end
            if pos != size:
                raise _bad("packed MESSAGE group has trailing bytes")
            continue
        if size > 1 + MAX_NAME:
            raise _bad("malformed MESSAGE group frame")
        peer = group[1:]
        if i + count > n:
            raise _bad(f"MESSAGE group promises {count} items that are not there")
        for _ in range(count):
            if i >= n:
                raise _bad(f"MESSAGE group promises {count} items that are not there")
            frame = frames[i]
            i += 1
            body = None
            if len(frame) > _FLAGS_AT and frame[_FLAGS_AT] & FLAG_BODY_FRAME:
                if i >= n:
                    raise _bad("MESSAGE item promises a body frame that is not there")
                body = frames[i]
                i += 1
            items.append(MessageItem(frame, peer, limits, body))
    return items


def encode_messages(groups: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes]:
    """A MESSAGE multipart from ``(peer, item frames)`` groups (at most ``MAX_BATCH`` items)."""
    total = sum(len(items) for _, items in groups)
    if not 1 <= total <= MAX_BATCH:
        raise LocalProtocolError(f"a MESSAGE carries 1 to {MAX_BATCH} items, not {total}")
    return message_frames(groups)
