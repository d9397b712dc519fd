"""What ``ackbus docs`` documents: the services, rpcs, events and messages of some schemas.

:func:`build` reads a descriptor set (compiled with imports and source info) and returns
a :class:`Catalogue`: per service its rpcs with their kind and effective policy (method,
request message and service options merged, the runtime's defaults for the rest, and
which level set each field), per event the services that subscribe to it, and per
message and enum its fields or values, legacy name and comments. :mod:`.asyncapi` and the
HTML template only print it.

Subscribers are the services with an rpc whose merged kind is EVENT, as the generator
declares them to publishers; who publishes is not declared in a schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from ackbus import options_pb2
from google.protobuf import descriptor_pb2 as d

from . import policy as pol
from .protos import FDP, ProtoFile, TypeIndex, TypeInfo, is_required

__all__ = [
    "Catalogue",
    "Enum",
    "Event",
    "Field",
    "Message",
    "PolicyValue",
    "Rpc",
    "Service",
    "build",
    "field_type",
]

EMPTY = "google.protobuf.Empty"

_SCALAR_NAMES = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in FDP.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


@dataclass(frozen=True, slots=True)
class PolicyValue:
    """One field of an effective policy."""

    name: str
    """As ``ackbus/options.proto`` spells it (``ack_timeout_s``)."""
    value: float | int | bool | str
    source: str
    """Which level set it: ``method``, ``message``, ``service`` or ``default``."""

    @property
    def text(self) -> str:
        if isinstance(self.value, bool):
            return str(self.value).lower()
        return str(self.value)


Policy = tuple[PolicyValue, ...]


@dataclass(frozen=True, slots=True)
class Rpc:
    service: str
    name: str
    full_name: str
    kind: str
    """``command``, ``request`` (it has a reply) or ``event``."""
    request: str
    response: str | None
    """``None`` when it returns ``google.protobuf.Empty``."""
    doc: str
    where: str
    policy: Policy


@dataclass(frozen=True, slots=True)
class Service:
    full_name: str
    doc: str
    where: str
    rpcs: tuple[Rpc, ...]


@dataclass(frozen=True, slots=True)
class Event:
    message: str
    policy: Policy
    """The event's own policy (its message's options and the defaults): a publish's."""
    subscribers: tuple[Rpc, ...]
    """One rpc per subscribing service, each with its own merged policy."""


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    number: int
    type: str
    """``uint64``, ``poker.Card``, ``map<string, poker.DealCards.Hand>``."""
    label: str
    """``repeated``, ``optional``, ``required`` or empty."""
    oneof: str | None
    doc: str


@dataclass(frozen=True, slots=True)
class Message:
    full_name: str
    doc: str
    where: str
    legacy_name: str | None
    policy: tuple[PolicyValue, ...]
    """Only what the message's own option sets."""
    fields: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class Enum:
    full_name: str
    doc: str
    where: str
    values: tuple[tuple[str, int, str], ...]
    """Name, number, comment."""


@dataclass(frozen=True, slots=True)
class Catalogue:
    files: tuple[str, ...]
    docs: tuple[tuple[str, str], ...]
    """Each file with its comment."""
    services: tuple[Service, ...]
    events: tuple[Event, ...]
    messages: tuple[Message, ...]
    enums: tuple[Enum, ...]
    index: TypeIndex
    """Every type of the descriptor set, for payload schemas."""

    @property
    def rpcs(self) -> tuple[Rpc, ...]:
        return tuple(rpc for svc in self.services for rpc in svc.rpcs)

    @property
    def requests(self) -> tuple[Rpc, ...]:
        """The request/reply rpcs."""
        return tuple(rpc for rpc in self.rpcs if rpc.kind == "request")


_NAMES = {runtime: proto for proto, runtime in pol.PROTO_FIELDS.items()}


# The policy option of each level (one field number, three extended messages).
_POLICY_OPTIONS: dict[str, Any] = {
    "MessageOptions": options_pb2.message_policy,
    "ServiceOptions": options_pb2.service_policy,
    "MethodOptions": options_pb2.method_policy,
}


def _option(options: d.MessageOptions | d.ServiceOptions | d.MethodOptions) -> pol.PolicyOptions:
    """The policy one level of a schema sets."""
    ext = _POLICY_OPTIONS[options.DESCRIPTOR.name]
    if not options.HasExtension(ext):
        return pol.PolicyOptions()
    return pol.from_proto(options.Extensions[ext])


def _effective(levels: Sequence[tuple[str, pol.PolicyOptions]]) -> Policy:
    """Every policy field but ``kind``, from the most specific level that sets it
    (``levels`` from the most to the least specific), else the runtime's default; an
    ``ordering_key`` and ``compress_above`` only where one is set (their defaults are
    "no order" and "never")."""
    out = []
    for f in fields(pol.PolicyOptions):
        if f.name == "kind":
            continue
        source, value = "default", getattr(pol.RUNTIME_DEFAULTS, f.name)
        for name, level in levels:
            if getattr(level, f.name) is not None:
                source, value = name, getattr(level, f.name)
                break
        if f.name in ("ordering_key", "compress_above") and not value:
            continue
        out.append(PolicyValue(_NAMES[f.name], value, source))
    return tuple(out)


def _set_only(options: pol.PolicyOptions) -> Policy:
    return tuple(
        PolicyValue(_NAMES[name], value, "message")
        for name, value in options.items()
        if name != "kind"
    )


def build(fds: d.FileDescriptorSet, files: Sequence[str]) -> Catalogue:
    """The catalogue of ``files`` (names as protoc saw them) out of ``fds``."""
    index = TypeIndex(fds.file)
    chosen = [index.files[name] for name in files]
    services = tuple(svc for pf in chosen for svc in _services(pf, index))
    events: dict[str, list[Rpc]] = {}
    for svc in services:
        for rpc in svc.rpcs:
            if rpc.kind == "event":
                events.setdefault(rpc.request, []).append(rpc)
    messages, enums = [], []
    for pf in chosen:
        for info in index.messages_of(pf.name):
            if info.is_map_entry:
                continue
            messages.append(_message(info, index))
            if _option(_msg(info).options).is_event:
                events.setdefault(info.full_name, [])
        enums += [_enum(info) for info in _enums_of(index, pf.name)]
    return Catalogue(
        files=tuple(files),
        docs=tuple((pf.name, pf.doc) for pf in chosen),
        services=services,
        events=tuple(
            Event(
                name,
                _effective([("message", _message_level(index[name]))]),
                tuple(sorted(subs, key=lambda r: r.service)),
            )
            for name, subs in sorted(events.items())
        ),
        messages=tuple(messages),
        enums=tuple(enums),
        index=index,
    )


def _msg(info: TypeInfo) -> d.DescriptorProto:
    assert info.message is not None
    return info.message


def _message_level(info: TypeInfo) -> pol.PolicyOptions:
    return _option(_msg(info).options) if info.message is not None else pol.PolicyOptions()


def _services(pf: ProtoFile, index: TypeIndex) -> list[Service]:
    out = []
    pkg = f"{pf.proto.package}." if pf.proto.package else ""
    for i, svc in enumerate(pf.proto.service):
        full = pkg + svc.name
        service_level = _option(svc.options)
        rpcs = []
        for j, rpc in enumerate(svc.method):
            if rpc.client_streaming or rpc.server_streaming:
                continue  # not mapped by ackbus (the generator warns)
            req, resp = index[rpc.input_type], index[rpc.output_type]
            levels = [
                ("method", _option(rpc.options)),
                ("message", _message_level(req)),
                ("service", service_level),
            ]
            merged = pol.merge(level for _, level in levels)
            response = None if resp.full_name == EMPTY else resp.full_name
            kind = "event" if merged.is_event else "command" if response is None else "request"
            path = (6, i, 2, j)
            rpcs.append(
                Rpc(
                    service=full,
                    name=rpc.name,
                    full_name=f"{full}.{rpc.name}",
                    kind=kind,
                    request=req.full_name,
                    response=response,
                    doc=pf.at(path).comment,
                    where=pf.where(path),
                    policy=_effective(levels),
                )
            )
        out.append(Service(full, pf.at((6, i)).comment, pf.where((6, i)), tuple(rpcs)))
    return out


def field_type(f: d.FieldDescriptorProto, index: TypeIndex) -> str:
    """The field's type as a schema reader writes it."""
    base = _SCALAR_NAMES.get(f.type) or index[f.type_name].full_name
    entry = index.get(f.type_name) if f.type_name else None
    if f.label == FDP.LABEL_REPEATED and entry is not None and entry.is_map_entry:
        key, value = _msg(entry).field
        return f"map<{field_type(key, index)}, {field_type(value, index)}>"
    return base


def _label(pf: ProtoFile, f: d.FieldDescriptorProto, index: TypeIndex) -> str:
    if f.label == FDP.LABEL_REPEATED:
        entry = index.get(f.type_name) if f.type_name else None
        return "" if entry is not None and entry.is_map_entry else "repeated"
    if is_required(pf, f):
        return "required"
    if f.proto3_optional or (pf.syntax == "proto2" and f.label == FDP.LABEL_OPTIONAL):
        return "optional"
    return ""


def _message(info: TypeInfo, index: TypeIndex) -> Message:
    m = _msg(info)
    pf = info.file
    oneofs = [o.name for o in m.oneof_decl]
    out = []
    for i, f in enumerate(m.field):
        real_oneof = f.HasField("oneof_index") and not f.proto3_optional
        out.append(
            Field(
                name=f.name,
                number=f.number,
                type=field_type(f, index),
                label=_label(pf, f, index),
                oneof=oneofs[f.oneof_index] if real_oneof else None,
                doc=pf.at((*info.path, 2, i)).comment,
            )
        )
    return Message(
        full_name=info.full_name,
        doc=pf.at(info.path).comment,
        where=pf.where(info.path),
        legacy_name=m.options.Extensions[options_pb2.legacy_name] or None,
        policy=_set_only(_option(m.options)),
        fields=tuple(out),
    )


def _enums_of(index: TypeIndex, file_name: str) -> list[TypeInfo]:
    return [info for info in index.types() if info.file.name == file_name and info.enum is not None]


def _enum(info: TypeInfo) -> Enum:
    assert info.enum is not None
    pf = info.file
    values = tuple(
        (v.name, v.number, pf.at((*info.path, 2, i)).comment) for i, v in enumerate(info.enum.value)
    )
    return Enum(info.full_name, pf.at(info.path).comment, pf.where(info.path), values)
