"""A :class:`~.catalogue.Catalogue` as an AsyncAPI 3.0 document (a plain dict to dump).

The mapping (docs/codegen.md, "Documentation from the schemas"):

- a channel per command or request rpc (``poker.Table.StartHand``; its address is the
  message type ackbus routes by), a reply channel per request rpc (address ``null``: the
  reply goes back to whoever asked), and a channel per event type (``poker.HandStarted``);
- per command or request rpc, a ``receive`` operation (its service handles it) and a
  ``send`` operation (any client sends it); per event, one ``send`` operation (publish)
  and a ``receive`` operation per subscribing service;
- each operation carries the effective policy (``x-ackbus-policy``) and which level set
  each field (``x-ackbus-policy-set-by``); messages carry their legacy name and proto
  file; comments become descriptions and summaries;
- payloads are JSON Schema (draft 7, AsyncAPI's default schema format) derived from the
  descriptors, one component schema per message and enum, well-known types inline.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from . import __version__
from .catalogue import Catalogue, Policy, Rpc, field_type
from .protos import FDP, TypeIndex, TypeInfo, is_required

__all__ = ["CONTENT_TYPE", "VERSION", "document", "payload_schemas"]

VERSION = "3.0.0"
CONTENT_TYPE = "application/x-protobuf"

Json = dict[str, Any]

_INT32 = {FDP.TYPE_INT32, FDP.TYPE_SINT32, FDP.TYPE_SFIXED32}
_UINT32 = {FDP.TYPE_UINT32, FDP.TYPE_FIXED32}
_INT64 = {FDP.TYPE_INT64, FDP.TYPE_SINT64, FDP.TYPE_SFIXED64}
_UINT64 = {FDP.TYPE_UINT64, FDP.TYPE_FIXED64}

_WRAPPERS = {
    "google.protobuf.DoubleValue": FDP.TYPE_DOUBLE,
    "google.protobuf.FloatValue": FDP.TYPE_FLOAT,
    "google.protobuf.Int64Value": FDP.TYPE_INT64,
    "google.protobuf.UInt64Value": FDP.TYPE_UINT64,
    "google.protobuf.Int32Value": FDP.TYPE_INT32,
    "google.protobuf.UInt32Value": FDP.TYPE_UINT32,
    "google.protobuf.BoolValue": FDP.TYPE_BOOL,
    "google.protobuf.StringValue": FDP.TYPE_STRING,
    "google.protobuf.BytesValue": FDP.TYPE_BYTES,
}
# The well-known types with a JSON form of their own (proto3's JSON mapping), inline.
_WELL_KNOWN: dict[str, Json] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
}


def _scalar(kind: int) -> Json:
    if kind in (FDP.TYPE_DOUBLE, FDP.TYPE_FLOAT):
        return {"type": "number"}
    if kind in _INT32:
        return {"type": "integer", "format": "int32"}
    if kind in _UINT32:
        return {"type": "integer", "format": "uint32", "minimum": 0}
    if kind in _INT64:
        return {"type": "integer", "format": "int64"}
    if kind in _UINT64:
        return {"type": "integer", "format": "uint64", "minimum": 0}
    if kind == FDP.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == FDP.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    return {"type": "string"}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


class _Schemas:
    """Component schemas of every message and enum a payload reaches."""

    def __init__(self, index: TypeIndex) -> None:
        self.index = index
        self.out: dict[str, Json] = {}

    def of_type(self, name: str) -> Json:
        """The schema of a message or enum: inline for a well-known type, else a
        reference to its component (added, with what it reaches, on first use)."""
        if name in _WRAPPERS:
            return _scalar(_WRAPPERS[name])
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.out:
            info = self.index[name]
            self.out[name] = {}  # a recursive message finds its own reference
            self.out[name] = self._enum(info) if info.enum is not None else self._message(info)
        return _ref(name)

    def _field(self, f: FDP) -> Json:
        entry = self.index.get(f.type_name) if f.type_name else None
        if entry is not None and entry.is_map_entry:
            assert entry.message is not None
            key, item = entry.message.field
            out: Json = {"type": "object", "additionalProperties": self._field(item)}
            if key.type not in (FDP.TYPE_STRING, FDP.TYPE_BOOL):
                out["propertyNames"] = {"pattern": "^-?[0-9]+$"}
            return out
        value = _scalar(f.type) if entry is None else self.of_type(entry.full_name)
        return {"type": "array", "items": value} if f.label == FDP.LABEL_REPEATED else value

    def _message(self, info: TypeInfo) -> Json:
        assert info.message is not None
        pf = info.file
        out: Json = {"type": "object", "title": info.attr_path}
        doc = pf.at(info.path).comment
        if doc:
            out["description"] = doc
        props: Json = {}
        required = []
        groups: dict[str, list[str]] = {}
        for i, f in enumerate(info.message.field):
            schema = self._field(f)
            if "$ref" in schema:
                schema = {"allOf": [schema]}  # draft 7 ignores a $ref's siblings
            schema["x-proto-type"] = field_type(f, self.index)
            schema["x-proto-number"] = f.number
            comment = pf.at((*info.path, 2, i)).comment
            if comment:
                schema["description"] = comment
            props[f.name] = schema
            if is_required(pf, f):
                required.append(f.name)
            if f.HasField("oneof_index") and not f.proto3_optional:
                groups.setdefault(info.message.oneof_decl[f.oneof_index].name, []).append(f.name)
        if props:
            out["properties"] = props
        if required:
            out["required"] = required
        rules = [
            {
                "description": f"oneof {name}: at most one of {', '.join(members)}",
                "not": {"anyOf": [{"required": list(pair)} for pair in combinations(members, 2)]},
            }
            for name, members in groups.items()
            if len(members) > 1
        ]
        if rules:
            out["allOf"] = rules
        return out

    def _enum(self, info: TypeInfo) -> Json:
        assert info.enum is not None
        out: Json = {"type": "string", "title": info.attr_path}
        doc = info.file.at(info.path).comment
        if doc:
            out["description"] = doc
        out["enum"] = [v.name for v in info.enum.value]
        out["x-proto-numbers"] = {v.name: v.number for v in info.enum.value}
        return out


def payload_schemas(index: TypeIndex, names: list[str]) -> tuple[dict[str, Json], dict[str, Json]]:
    """Each of ``names``' payload schema, and the component schemas they reach."""
    schemas = _Schemas(index)
    payloads = {name: schemas.of_type(name) for name in names}
    return payloads, dict(sorted(schemas.out.items()))


def _policy(policy: Policy) -> Json:
    return {
        "x-ackbus-policy": {p.name: p.value for p in policy},
        "x-ackbus-policy-set-by": {p.name: p.source for p in policy if p.source != "default"},
    }


def _summary(doc: str) -> str:
    return " ".join(doc.split("\n\n")[0].split())


def _described(doc: str) -> Json:
    """A comment as a description, and its first paragraph as a summary when it has more."""
    if not doc:
        return {}
    first = _summary(doc)
    return (
        {"summary": first, "description": doc}
        if first != " ".join(doc.split())
        else {"description": doc}
    )


def _channel_ref(name: str) -> Json:
    return {"$ref": f"#/channels/{name}"}


def _message_ref(channel: str, message: str) -> Json:
    return {"$ref": f"#/channels/{channel}/messages/{message}"}


def _operations(rpc: Rpc, channel: str, tags: dict[str, Json]) -> dict[str, Json]:
    """The receive operation of one rpc (its service handles it) and, for a command or
    request, the send operation of its clients."""
    short = rpc.request.rpartition(".")[2]
    common: Json = {
        "channel": _channel_ref(channel),
        "messages": [_message_ref(channel, rpc.request)],
        "tags": [tags[rpc.service]],
    }
    if rpc.response is not None:
        reply = f"{rpc.full_name}.reply"
        common["reply"] = {
            "channel": _channel_ref(reply),
            "messages": [_message_ref(reply, rpc.response)],
        }
    extra: Json = {"x-ackbus-kind": rpc.kind, "x-ackbus-rpc": rpc.full_name, **_policy(rpc.policy)}
    what = {"command": "a command", "request": "a request", "event": "an event"}[rpc.kind]
    out = {
        rpc.full_name: {
            "action": "receive",
            "title": f"{rpc.service} handles {short}",
            **_described(rpc.doc),
            **common,
            "x-ackbus-service": rpc.service,
            "x-ackbus-where": rpc.where,
            **extra,
        }
    }
    if rpc.kind != "event":
        out[f"{rpc.full_name}.send"] = {
            "action": "send",
            "title": f"Send {short} to {rpc.service}",
            "description": (
                f"Any service sends {what} to one instance of {rpc.service}; "
                "it is acknowledged after the handler ran."
            ),
            **common,
            **extra,
        }
    return out


def document(cat: Catalogue, *, title: str, version: str) -> Json:
    """The AsyncAPI 3.0 document of ``cat``."""
    names: list[str] = []
    for rpc in cat.rpcs:
        names += [rpc.request] + ([rpc.response] if rpc.response else [])
    names += [e.message for e in cat.events]
    payloads, schemas = payload_schemas(cat.index, list(dict.fromkeys(names)))
    described = {m.full_name: m for m in cat.messages}
    messages: dict[str, Json] = {}
    for name, payload in sorted(payloads.items()):
        msg: Json = {
            "name": name,
            "title": name.rpartition(".")[2],
            "contentType": CONTENT_TYPE,
            "payload": payload,
        }
        found_type = cat.index[name]
        msg.update(_described(found_type.file.at(found_type.path).comment))
        msg["x-ackbus-where"] = found_type.file.where(found_type.path)
        found = described.get(name)
        if found is not None and found.legacy_name:
            msg["x-ackbus-legacy-name"] = found.legacy_name
        messages[name] = msg

    tags = {svc.full_name: {"name": svc.full_name} for svc in cat.services}
    channels: dict[str, Json] = {}
    operations: dict[str, Json] = {}
    for rpc in cat.rpcs:
        if rpc.kind == "event":
            continue
        channels[rpc.full_name] = {
            "address": rpc.request,
            "title": f"{rpc.service}.{rpc.name}",
            "description": f"{rpc.request} to one instance of {rpc.service}.",
            "messages": {rpc.request: {"$ref": f"#/components/messages/{rpc.request}"}},
        }
        if rpc.response is not None:
            channels[f"{rpc.full_name}.reply"] = {
                "address": None,
                "title": f"Reply of {rpc.full_name}",
                "description": f"{rpc.response}, back to the instance that sent the request.",
                "messages": {rpc.response: {"$ref": f"#/components/messages/{rpc.response}"}},
            }
        operations.update(_operations(rpc, rpc.full_name, tags))
    for event in cat.events:
        subscribers = [rpc.service for rpc in event.subscribers]
        channels[event.message] = {
            "address": event.message,
            "title": event.message,
            "description": (
                f"The event {event.message}, to one instance of each subscriber: "
                + (", ".join(subscribers) if subscribers else "none declared")
                + "."
            ),
            "messages": {event.message: {"$ref": f"#/components/messages/{event.message}"}},
        }
        operations[f"{event.message}.publish"] = {
            "action": "send",
            "title": f"Publish {event.message.rpartition('.')[2]}",
            "description": (
                "Any service publishes it; each publish waits for every declared subscriber."
            ),
            "channel": _channel_ref(event.message),
            "messages": [_message_ref(event.message, event.message)],
            "x-ackbus-kind": "event",
            "x-ackbus-subscribers": subscribers,
            **_policy(event.policy),
        }
        for rpc in event.subscribers:
            operations.update(_operations(rpc, event.message, tags))

    files = "\n".join(
        f"- `{name}`" + (f": {_summary(doc)}" if doc else "") for name, doc in cat.docs
    )
    about: Json = {
        "title": title,
        "version": version,
        "description": (
            f"Generated by ackbus docs (ackbus_codegen {__version__}) from:\n\n{files}\n\n"
            "Payloads are protobuf; their schemas here are derived from the descriptors."
        ),
        "tags": [
            {"name": svc.full_name, **({"description": svc.doc} if svc.doc else {})}
            for svc in cat.services
        ],
    }
    return {
        "asyncapi": VERSION,
        "info": about,
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
