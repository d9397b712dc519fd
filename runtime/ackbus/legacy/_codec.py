"""Adapters between typed messages and the formats pre-ackbus services speak.

Three shapes of legacy data are read and written here, all pure (no sockets):

* the **legacy JSON envelope**, one frame, PascalCase, as NetMQ-era services produce it::

      {"MessageId": "…", "Type": "StartHand", "SenderId": "lobby-1",
       "Timestamp": "2024-05-01T12:00:00Z", "Payload": {"TableId": "t1", "Seats": 6}}

* **topic + payload** multipart frames, as plain pyzmq PUB/SUB or PUSH/PULL services
  send them: ``[topic, JSON payload]`` or ``[topic, protobuf bytes]``
  (:class:`PayloadFormat` says which);
* **Python dicts**: a message as the dict its JSON mapping gives.

Type names map through a :class:`~ackbus.Registry` (full proto name and legacy name
both resolve); payloads follow protobuf's JSON mapping, with field names written in
the case the legacy side expects (:class:`FieldCase`) and read in any of them.

Every decoder turns any input into a :class:`LegacyMessage`, a :class:`LegacyFormatError`
(the input is malformed) or a :class:`~ackbus.SchemaError` (the type is unknown):
never another exception. That is what lets the bridge count bad input instead of dying.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from .._types import MessageSpec, Registry, Untyped
from ..errors import RemoteProtocolError, SchemaError
from ._custom import CustomFormat

__all__ = [
    "FieldCase",
    "LegacyCodec",
    "LegacyFormat",
    "LegacyFormatError",
    "LegacyMessage",
    "PayloadFormat",
]

_MAX_BYTES = 1 << 20
"""Default cap on one legacy frame: a legacy peer cannot make us parse 1 GB of JSON."""


class LegacyFormatError(RemoteProtocolError):
    """Legacy input that cannot be read: not JSON, not an object, a missing ``Type``,
    a payload that does not fit its message type, undecodable protobuf bytes…

    It is the legacy peer's fault (hence a :class:`~ackbus.RemoteProtocolError`, code
    ``MALFORMED``); ``type_name`` names the message type when it could be read."""

    def __init__(self, reason: str, *, type_name: str = "") -> None:
        super().__init__(reason, code="MALFORMED")
        self.type_name = type_name


class PayloadFormat(enum.Enum):
    """How the payload frame of a ``[topic, payload]`` multipart is encoded."""

    JSON = "json"
    PROTOBUF = "protobuf"


class LegacyFormat(enum.Enum):
    """The shape of a whole legacy multipart, for :meth:`LegacyCodec.encode` / ``decode``."""

    ENVELOPE = "envelope"
    """One frame holding the legacy JSON envelope. Reading also takes
    ``[topic, envelope]``, as PUB services that want SUB-side filtering send it."""
    TOPIC_JSON = "topic+json"
    """``[topic, JSON payload]``; the topic is the type name (or mapped by ``topics``)."""
    TOPIC_PROTOBUF = "topic+protobuf"
    """``[topic, protobuf bytes]``; the type must be in the registry."""


class FieldCase(enum.Enum):
    """How field names are written in legacy JSON. Reading accepts all three."""

    CAMEL = "camel"
    """protobuf's JSON names: ``tableId`` (the JSON mapping's default)."""
    SNAKE = "snake"
    """The proto field names: ``table_id``."""
    PASCAL = "pascal"
    """C# style: ``TableId``, as Json.NET writes .NET properties by default."""


@dataclass(frozen=True, slots=True)
class LegacyMessage:
    """One decoded legacy message: the message and the metadata the legacy side sent."""

    message: Message | Untyped
    """Typed when the registry knows the type; :class:`~ackbus.Untyped` otherwise
    (only with ``allow_untyped=True``)."""
    type_name: str
    """The type name as the legacy side wrote it (legacy name, full name or topic)."""
    message_id: str = ""
    sender: str = ""
    timestamp: datetime | None = None

    @property
    def full_name(self) -> str:
        """The full proto name of a typed message, else the untyped type name."""
        if isinstance(self.message, Untyped):
            return self.message.type_name
        return self.message.DESCRIPTOR.full_name


_WELL_KNOWN = "google.protobuf."
"""Well-known types have their own JSON forms (a Timestamp is a string): not renamed."""


def _squash(name: str) -> str:
    return name.replace("_", "").lower()


@dataclass(frozen=True, slots=True)
class _Field:
    """One field, as the renamers need it."""

    name: str
    """The proto field name, which ``MessageToDict`` writes and ``ParseDict`` reads."""
    out: Mapping[FieldCase, str]
    """The key written in each case."""
    nested: Descriptor | None
    """The message type to rename inside (a map's value type), if any."""
    is_map: bool
    """A map's keys are data: never renamed."""


@dataclass(frozen=True, slots=True)
class _Table:
    by_name: Mapping[str, _Field]
    """Proto name and JSON name → field."""
    by_squash: Mapping[str, _Field]
    """Lower case without underscores → field (``TableId``, ``TABLE_ID``)."""


@functools.cache
def _table(desc: Descriptor) -> _Table:
    """The renaming table of one message type, built once (descriptors are immutable)."""
    by_name: dict[str, _Field] = {}
    by_squash: dict[str, _Field] = {}
    for fd in desc.fields:
        json_name = fd.json_name
        out = {
            FieldCase.SNAKE: fd.name,
            FieldCase.CAMEL: json_name,
            FieldCase.PASCAL: json_name[:1].upper() + json_name[1:],
        }
        nested, is_map = _nested(fd)
        field = _Field(fd.name, out, nested, is_map)
        by_name.setdefault(fd.name, field)
        by_squash.setdefault(_squash(fd.name), field)
    for fd in desc.fields:  # JSON names after proto names: an exact name wins
        by_name.setdefault(fd.json_name, by_name[fd.name])
    return _Table(by_name, by_squash)


def _nested(field: FieldDescriptor) -> tuple[Descriptor | None, bool]:
    msg_type = field.message_type
    if msg_type is None:
        return None, False
    if msg_type.GetOptions().map_entry:
        value = msg_type.fields_by_name["value"].message_type
        if value is None or value.full_name.startswith(_WELL_KNOWN):
            return None, True
        return value, True
    if msg_type.full_name.startswith(_WELL_KNOWN):
        return None, False
    return msg_type, False


def _rename_out(obj: dict[str, Any], desc: Descriptor, case: FieldCase) -> dict[str, Any]:
    """Keys of a ``MessageToDict(..., preserving_proto_field_name=True)`` result → ``case``."""
    by_name = _table(desc).by_name
    out: dict[str, Any] = {}
    for key, value in obj.items():
        field = by_name.get(key)
        if field is None:  # pragma: no cover - MessageToDict only writes known fields
            out[key] = value
            continue
        out[field.out[case]] = _recurse(value, field, case, _rename_out)
    return out


def _rename_in(obj: dict[str, Any], desc: Descriptor, case: FieldCase) -> dict[str, Any]:
    """Keys of legacy JSON in any :class:`FieldCase` → proto field names, so that
    ``ParseDict`` reads PascalCase too. Unknown keys are kept: ParseDict judges them."""
    table = _table(desc)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        field = table.by_name.get(key)
        if field is None and isinstance(key, str):
            field = table.by_squash.get(_squash(key))
        if field is None or field.name in out:
            out[key] = value
            continue
        out[field.name] = _recurse(value, field, case, _rename_in)
    return out


def _recurse(value: Any, field: _Field, case: FieldCase, rename: Any) -> Any:
    nested = field.nested
    if nested is None:
        return value
    if field.is_map:
        if not isinstance(value, dict):
            return value
        return {k: rename(v, nested, case) if isinstance(v, dict) else v for k, v in value.items()}
    if isinstance(value, list):
        return [rename(v, nested, case) if isinstance(v, dict) else v for v in value]
    return rename(value, nested, case) if isinstance(value, dict) else value


def _lookup(obj: Mapping[str, Any], key: str) -> Any:
    """Envelope keys are matched case-insensitively, as Json.NET reads them."""
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def _format_timestamp(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_timestamp(raw: object) -> datetime | None:
    """ISO 8601 (naive means UTC) or Unix seconds; ``None``/"" when absent."""
    if raw is None or raw == "":
        return None
    try:
        if isinstance(raw, str):
            ts = datetime.fromisoformat(raw)
            return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
        if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
            return datetime.fromtimestamp(raw, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise LegacyFormatError(f"Timestamp {raw!r} is not a time: {exc}") from None
    raise LegacyFormatError(f"Timestamp must be an ISO 8601 string or Unix seconds, got {raw!r}")


class LegacyCodec:
    """Converts between typed messages and legacy formats, by one registry.

    ``registry`` maps legacy and full type names to classes. ``allow_untyped`` lets
    types the registry does not know through as :class:`~ackbus.Untyped` instead of
    raising :class:`~ackbus.SchemaError`. ``field_case`` is the case of field names
    written; reading accepts any case. ``ignore_unknown_fields`` makes the payload
    parser skip fields the schema lacks (a newer legacy peer) instead of refusing.
    ``topics`` maps topic strings to type names for services whose topics are not
    type names (and back, when writing). ``sender`` fills ``SenderId`` by default.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        allow_untyped: bool = False,
        field_case: FieldCase = FieldCase.CAMEL,
        ignore_unknown_fields: bool = False,
        topics: Mapping[str, str] | None = None,
        sender: str = "",
        max_bytes: int = _MAX_BYTES,
    ) -> None:
        self.registry = registry
        self.allow_untyped = allow_untyped
        self.field_case = field_case
        self.ignore_unknown_fields = ignore_unknown_fields
        self.sender = sender
        self.max_bytes = max_bytes
        self._type_of_topic = dict(topics or {})
        self._topic_of_type: dict[str, str] = {}
        for topic, name in self._type_of_topic.items():
            spec = registry.get(name)
            self._topic_of_type[spec.full_name if spec is not None else name] = topic

    # ------------------------------------------------------------------ types

    def spec_for(self, type_name: str) -> MessageSpec | None:
        """The registry's spec for ``type_name``; ``None`` for an allowed untyped name.

        Raises :class:`~ackbus.SchemaError` for an unknown name unless untyped
        messages are allowed."""
        spec = self.registry.get(type_name)
        if spec is None and not self.allow_untyped:
            raise SchemaError(f"unknown legacy message type {type_name!r}")
        return spec

    def legacy_type(self, msg: Message | Untyped) -> str:
        """The ``Type`` written for ``msg``: its legacy name, else its full name."""
        if isinstance(msg, Untyped):
            spec = self.registry.get(msg.type_name)
            return (spec.legacy_name or spec.full_name) if spec is not None else msg.type_name
        spec = self.registry.for_class(type(msg))
        if spec is not None and spec.legacy_name:
            return spec.legacy_name
        return msg.DESCRIPTOR.full_name

    def topic_for(self, msg: Message | Untyped) -> str:
        """The topic written for ``msg``: mapped by ``topics``, else its legacy type."""
        if isinstance(msg, Untyped):
            spec = self.registry.get(msg.type_name)
            full = spec.full_name if spec is not None else msg.type_name
        else:
            full = msg.DESCRIPTOR.full_name
        return self._topic_of_type.get(full) or self.legacy_type(msg)

    # ------------------------------------------------------------------ dicts

    def to_dict(self, msg: Message | Untyped) -> dict[str, Any]:
        """``msg`` as its JSON mapping (a JSON-able dict), field names in ``field_case``."""
        if isinstance(msg, Untyped):
            spec = self.registry.get(msg.type_name)
            if spec is None:
                return dict(msg.payload)
            try:
                typed = self.from_dict(msg.type_name, msg.payload)
            except LegacyFormatError as exc:  # our caller's data, not a legacy peer's
                raise SchemaError(exc.reason) from None
            assert isinstance(typed, Message)
            msg = typed
        raw = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        return _rename_out(raw, cast(Descriptor, msg.DESCRIPTOR), self.field_case)

    def from_dict(self, type_name: str, payload: Mapping[str, Any]) -> Message | Untyped:
        """The message of type ``type_name`` whose JSON mapping is ``payload`` (field
        names in any case). :class:`LegacyFormatError` if it does not fit the schema."""
        spec = self.spec_for(type_name)
        if spec is None:
            return Untyped(type_name, dict(payload))
        msg = spec.cls()
        try:
            fields = _rename_in(dict(payload), cast(Descriptor, msg.DESCRIPTOR), self.field_case)
            json_format.ParseDict(fields, msg, ignore_unknown_fields=self.ignore_unknown_fields)
        except Exception as exc:  # ParseError, and TypeError/RecursionError on odd input
            raise LegacyFormatError(
                f"payload does not fit {spec.full_name}: {exc}", type_name=type_name
            ) from None
        return msg

    # ------------------------------------------------------------------ JSON envelope

    def encode_envelope_dict(
        self,
        msg: Message | Untyped,
        *,
        message_id: str | None = None,
        sender: str | None = None,
        timestamp: datetime | None = None,
    ) -> dict[str, Any]:
        """The legacy envelope of ``msg`` as a dict (a fresh GUID and now by default)."""
        return {
            "MessageId": message_id if message_id is not None else str(uuid.uuid4()),
            "Type": self.legacy_type(msg),
            "SenderId": sender if sender is not None else self.sender,
            "Timestamp": _format_timestamp(timestamp or datetime.now(UTC)),
            "Payload": self.to_dict(msg),
        }

    def encode_envelope(
        self,
        msg: Message | Untyped,
        *,
        message_id: str | None = None,
        sender: str | None = None,
        timestamp: datetime | None = None,
    ) -> bytes:
        """The legacy envelope of ``msg``, one UTF-8 JSON frame."""
        env = self.encode_envelope_dict(
            msg, message_id=message_id, sender=sender, timestamp=timestamp
        )
        return _dumps(env, env["Type"])

    def decode_envelope_dict(self, obj: object) -> LegacyMessage:
        """Read a legacy envelope already parsed from JSON."""
        if not isinstance(obj, dict):
            raise LegacyFormatError(f"a legacy envelope is a JSON object, not {_kind(obj)}")
        type_name = _lookup(obj, "Type")
        if not isinstance(type_name, str) or not type_name:
            raise LegacyFormatError(f"the envelope's Type must be a non-empty string: {obj!r:.200}")
        message_id = _lookup(obj, "MessageId")
        if message_id is None:
            message_id = ""
        elif isinstance(message_id, int) and not isinstance(message_id, bool):
            message_id = str(message_id)
        elif not isinstance(message_id, str):
            raise LegacyFormatError(f"MessageId must be a string, not {_kind(message_id)}")
        sender = _lookup(obj, "SenderId")
        if sender is None:
            sender = ""
        elif not isinstance(sender, str):
            raise LegacyFormatError(f"SenderId must be a string, not {_kind(sender)}")
        timestamp = _parse_timestamp(_lookup(obj, "Timestamp"))
        payload = _lookup(obj, "Payload")
        if payload is None:
            payload = {}
        elif isinstance(payload, str):  # some services double-encode the payload
            payload = self._load_json(payload, "Payload")
        if not isinstance(payload, dict):
            raise LegacyFormatError(
                f"the Payload of {type_name} must be an object, not {_kind(payload)}",
                type_name=type_name,
            )
        message = self.from_dict(type_name, payload)
        return LegacyMessage(message, type_name, message_id, sender, timestamp)

    def decode_envelope(self, data: bytes) -> LegacyMessage:
        """Read one legacy envelope frame."""
        return self.decode_envelope_dict(self._load_json(data, "envelope"))

    # ------------------------------------------------------------------ topic frames

    def encode_frames(self, msg: Message | Untyped, payload: PayloadFormat) -> list[bytes]:
        """``[topic, payload]`` for ``msg``; a protobuf payload needs a known type."""
        topic = self.topic_for(msg).encode()
        if payload is PayloadFormat.JSON:
            return [topic, _dumps(self.to_dict(msg), topic.decode())]
        if isinstance(msg, Untyped):
            if msg.type_name not in self.registry:
                raise SchemaError(f"{msg.type_name!r} is not in the registry: no protobuf form")
            typed = self.from_dict(msg.type_name, msg.payload)
            assert isinstance(typed, Message)
            msg = typed
        return [topic, msg.SerializeToString()]

    def decode_frames(self, frames: Sequence[bytes], payload: PayloadFormat) -> LegacyMessage:
        """Read a ``[topic, payload]`` multipart."""
        if len(frames) != 2:
            raise LegacyFormatError(f"expected [topic, payload], got {len(frames)} frames")
        raw_topic, body = frames
        try:
            topic = bytes(raw_topic).decode()
        except UnicodeDecodeError:
            raise LegacyFormatError(f"topic {bytes(raw_topic)[:64]!r} is not UTF-8") from None
        if not topic:
            raise LegacyFormatError("empty topic")
        type_name = self._type_of_topic.get(topic, topic)
        if payload is PayloadFormat.JSON:
            data = self._load_json(body, f"{type_name} payload")
            if not isinstance(data, dict):
                raise LegacyFormatError(
                    f"the payload of {type_name} must be an object, not {_kind(data)}",
                    type_name=type_name,
                )
            return LegacyMessage(self.from_dict(type_name, data), topic)
        spec = self.registry.get(type_name)
        if spec is None:
            raise SchemaError(f"unknown legacy message type {type_name!r} (protobuf payload)")
        if len(body) > self.max_bytes:
            raise LegacyFormatError(f"{type_name} payload of {len(body)} bytes exceeds the limit")
        msg = spec.cls()
        try:
            msg.ParseFromString(bytes(body))
        except Exception as exc:  # DecodeError, or RecursionError on deep nesting
            raise LegacyFormatError(
                f"undecodable {spec.full_name} bytes: {exc}", type_name=type_name
            ) from None
        return LegacyMessage(msg, topic)

    # ------------------------------------------------------------------ any format

    def encode(
        self,
        msg: Message | Untyped,
        fmt: LegacyFormat | CustomFormat[Any],
        *,
        message_id: str | None = None,
        sender: str | None = None,
        timestamp: datetime | None = None,
    ) -> list[bytes]:
        """``msg`` as the multipart ``fmt`` describes (metadata only travels in an
        envelope: topic formats and custom ones have nowhere to put it)."""
        if isinstance(fmt, CustomFormat):
            return _write_custom(fmt, msg)
        if fmt is LegacyFormat.ENVELOPE:
            frame = self.encode_envelope(
                msg, message_id=message_id, sender=sender, timestamp=timestamp
            )
            return [frame]
        payload = PayloadFormat.JSON if fmt is LegacyFormat.TOPIC_JSON else PayloadFormat.PROTOBUF
        return self.encode_frames(msg, payload)

    def decode(
        self, frames: Sequence[bytes], fmt: LegacyFormat | CustomFormat[Any]
    ) -> LegacyMessage:
        """Read a multipart in format ``fmt``."""
        if isinstance(fmt, CustomFormat):
            msg = _read_custom(fmt, frames)
            return LegacyMessage(msg, msg.DESCRIPTOR.full_name)
        if fmt is LegacyFormat.ENVELOPE:
            if not 1 <= len(frames) <= 2:
                raise LegacyFormatError(
                    f"expected [envelope] or [topic, envelope], got {len(frames)} frames"
                )
            return self.decode_envelope(frames[-1])
        payload = PayloadFormat.JSON if fmt is LegacyFormat.TOPIC_JSON else PayloadFormat.PROTOBUF
        return self.decode_frames(frames, payload)

    # ------------------------------------------------------------------ helpers

    def _load_json(self, data: bytes | str, what: str) -> Any:
        """JSON from bytes, or from a str (a payload encoded twice: as a str it may hold
        lone surrogates, which ``str.encode`` refuses)."""
        if len(data) > self.max_bytes:
            raise LegacyFormatError(f"{what} of {len(data)} bytes exceeds {self.max_bytes}")
        try:
            return json.loads(data if isinstance(data, str) else bytes(data))
        except RecursionError:
            raise LegacyFormatError(f"{what} is nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise LegacyFormatError(f"{what} is not JSON: {exc}") from None


def _dumps(obj: dict[str, Any], type_name: str) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:  # an untyped payload holding a non-JSON value
        raise SchemaError(f"{type_name} payload is not JSON-able: {exc}") from None


def _kind(obj: object) -> str:
    return "null" if obj is None else type(obj).__name__


def _read_custom(fmt: CustomFormat[Any], frames: Sequence[bytes]) -> Message:
    """``fmt.decode(frames)``; whatever the user's function raises or returns that is not
    a message is a :class:`LegacyFormatError` (the legacy peer's input is at fault)."""
    try:
        msg = fmt.decode(frames)
    except Exception as exc:
        s = "s" if len(frames) != 1 else ""
        raise LegacyFormatError(
            f"{fmt.label} could not read {len(frames)} frame{s}: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(msg, Message):
        raise LegacyFormatError(f"{fmt.label} returned {_kind(msg)}, not a protobuf message")
    return msg


def _write_custom(fmt: CustomFormat[Any], msg: Message | Untyped) -> list[bytes]:
    """``fmt.encode(msg)``; a failure, or anything but a non-empty list of bytes, is a
    :class:`SchemaError` (the layout cannot hold this message)."""
    name = msg.type_name if isinstance(msg, Untyped) else msg.DESCRIPTOR.full_name
    if fmt.encode is None:
        raise SchemaError(f"{fmt.label} has no encode function: it cannot write {name}")
    if isinstance(msg, Untyped):
        raise SchemaError(f"{fmt.label} writes typed messages only, not untyped {name}")
    try:
        frames = list(fmt.encode(msg))
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise SchemaError(f"{fmt.label} could not write {name}: {why}") from None
    if not frames or not all(isinstance(f, bytes) for f in frames):
        raise SchemaError(f"{fmt.label} must write a non-empty list of bytes for {name}")
    return frames
