"""``ackbus breaking``: refuse schema changes that break peers still running the old code.

Both versions are compiled by protoc into descriptor sets (with source info, so each break
names a line) and compared element by element, in the manner of buf's breaking check:

- ``FIELD_REMOVED``: a field number gone without ``reserved`` (an old peer's data lands in
  whatever reuses the number);
- ``FIELD_RENUMBERED``: a field kept its name but changed its number;
- ``FIELD_RETYPED``: a field number changed type or cardinality (old peers misread it);
- ``MESSAGE_REMOVED``, ``SERVICE_REMOVED``, ``RPC_REMOVED``: gone (or renamed) while its
  file's package stays: old senders' messages find no handler;
- ``RPC_INPUT_CHANGED``: an rpc takes another message type (ackbus routes by it);
- ``KIND_CHANGED``: an rpc's effective policy kind changed between COMMAND and EVENT;
- ``ORDERING_KEY_CHANGED``: an rpc's effective ordering key was set, removed or changed
  (old and new senders order its messages by different keys meanwhile).

Adding fields, messages, services, rpcs and options passes. Each break is accepted with
``--allow`` naming its rule or the element's full name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ackbus import options_pb2
from google.protobuf import descriptor_pb2 as d

from . import policy as pol
from .protoc import descriptor_set

__all__ = ["Break", "compare", "descriptor_set"]


@dataclass(frozen=True, slots=True)
class Break:
    where: str
    """``file:line`` (the new file's, or the old one's for what was removed)."""
    rule: str
    element: str
    """Full name of what broke (``poker.StartHand.seats``)."""
    what: str
    why: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.rule} {self.element}: {self.what}; {self.why}; {self.fix}"


class _File:
    """One file's elements by full name, and the line of each."""

    def __init__(self, f: d.FileDescriptorProto) -> None:
        self.name = f.name
        self.package = f.package
        self.lines = {
            tuple(loc.path): loc.span[0] + 1 for loc in f.source_code_info.location if loc.span
        }
        prefix = f"{f.package}." if f.package else ""
        self.messages: dict[str, tuple[d.DescriptorProto, tuple[int, ...]]] = {}
        for i, m in enumerate(f.message_type):
            self._add(m, prefix, (4, i))
        self.services: dict[str, tuple[d.ServiceDescriptorProto, tuple[int, ...]]] = {
            prefix + s.name: (s, (6, i)) for i, s in enumerate(f.service)
        }

    def _add(self, m: d.DescriptorProto, prefix: str, path: tuple[int, ...]) -> None:
        full = prefix + m.name
        self.messages[full] = (m, path)
        for i, nested in enumerate(m.nested_type):
            self._add(nested, f"{full}.", (*path, 3, i))

    def at(self, path: tuple[int, ...]) -> str:
        while path and path not in self.lines:
            path = path[:-2]
        return f"{self.name}:{self.lines.get(path, 1)}"


def _reserved(m: d.DescriptorProto, field: d.FieldDescriptorProto) -> bool:
    if field.name in m.reserved_name:
        return True
    return any(r.start <= field.number < r.end for r in m.reserved_range)


def _type_of(f: d.FieldDescriptorProto) -> tuple[int, str, bool]:
    return f.type, f.type_name, f.label == d.FieldDescriptorProto.LABEL_REPEATED


def _effective(
    rpc: d.MethodDescriptorProto,
    svc: d.ServiceDescriptorProto,
    messages: dict[str, d.DescriptorProto],
) -> pol.PolicyOptions:
    """The rpc's policy as set by the schema: method, then request message, then
    service option."""
    levels = []
    if rpc.options.HasExtension(options_pb2.method_policy):
        levels.append(pol.from_proto(rpc.options.Extensions[options_pb2.method_policy]))
    req = messages.get(rpc.input_type.lstrip("."))
    if req is not None and req.options.HasExtension(options_pb2.message_policy):
        levels.append(pol.from_proto(req.options.Extensions[options_pb2.message_policy]))
    if svc.options.HasExtension(options_pb2.service_policy):
        levels.append(pol.from_proto(svc.options.Extensions[options_pb2.service_policy]))
    return pol.merge(levels)


def compare(
    old: d.FileDescriptorSet, new: d.FileDescriptorSet, files: Iterable[str]
) -> list[Break]:
    """The breaks from ``old`` to ``new`` in ``files`` (file names as protoc saw them)."""
    olds = {f.name: _File(f) for f in old.file}
    news = {f.name: _File(f) for f in new.file}
    old_msgs = {n: m for f in olds.values() for n, (m, _) in f.messages.items()}
    new_msgs = {n: m for f in news.values() for n, (m, _) in f.messages.items()}
    out: list[Break] = []
    for name in files:
        was, now = olds.get(name), news.get(name)
        if was is None or now is None or was.package != now.package:
            continue  # a new file, or a package moved: nothing of the old one to keep
        out += _messages(was, now)
        out += _services(was, now, old_msgs, new_msgs)
    return out


def _messages(was: _File, now: _File) -> list[Break]:
    out = []
    for full, (m, path) in was.messages.items():
        found = now.messages.get(full)
        if found is None:
            out.append(
                Break(
                    was.at(path),
                    "MESSAGE_REMOVED",
                    full,
                    "the message is gone (removed or renamed)",
                    "old peers still send and expect it",
                    "keep it (mark it deprecated) until no peer uses it",
                )
            )
            continue
        n, npath = found
        by_number = {f.number: (i, f) for i, f in enumerate(n.field)}
        by_name = {f.name: f for f in n.field}
        for field in m.field:
            element = f"{full}.{field.name}"
            kept = by_number.get(field.number)
            if kept is None:
                renamed = by_name.get(field.name)
                if renamed is not None:
                    out.append(
                        Break(
                            now.at((*npath, 2, list(n.field).index(renamed))),
                            "FIELD_RENUMBERED",
                            element,
                            f"field number {field.number} became {renamed.number}",
                            "old peers write and read it under the old number",
                            "keep the number; add a new field for a new meaning",
                        )
                    )
                elif not _reserved(n, field):
                    out.append(
                        Break(
                            now.at(npath),
                            "FIELD_REMOVED",
                            element,
                            f"field {field.number} is gone and not reserved",
                            "a later field reusing the number would misread old data",
                            f"add `reserved {field.number};` (and the name) to {n.name}",
                        )
                    )
                continue
            i, nf = kept
            if _type_of(nf) != _type_of(field):
                out.append(
                    Break(
                        now.at((*npath, 2, i)),
                        "FIELD_RETYPED",
                        element,
                        f"field {field.number} changed type or cardinality",
                        "old peers misread the bytes (a uint64 read as a string is empty)",
                        "add a new field with a new number; reserve the old one",
                    )
                )
    return out


def _services(
    was: _File,
    now: _File,
    old_msgs: dict[str, d.DescriptorProto],
    new_msgs: dict[str, d.DescriptorProto],
) -> list[Break]:
    out = []
    for full, (svc, path) in was.services.items():
        found = now.services.get(full)
        if found is None:
            out.append(
                Break(
                    was.at(path),
                    "SERVICE_REMOVED",
                    full,
                    "the service is gone (removed or renamed)",
                    "old senders' messages find no handler",
                    "keep it until no sender uses it",
                )
            )
            continue
        nsvc, npath = found
        methods = {m.name: (i, m) for i, m in enumerate(nsvc.method)}
        for rpc in svc.method:
            element = f"{full}.{rpc.name}"
            kept = methods.get(rpc.name)
            if kept is None:
                out.append(
                    Break(
                        now.at(npath),
                        "RPC_REMOVED",
                        element,
                        "the rpc is gone (removed or renamed)",
                        "old senders' messages find no handler",
                        "keep it until no sender uses it",
                    )
                )
                continue
            i, nrpc = kept
            where = now.at((*npath, 2, i))
            if nrpc.input_type != rpc.input_type:
                out.append(
                    Break(
                        where,
                        "RPC_INPUT_CHANGED",
                        element,
                        f"it takes {nrpc.input_type.lstrip('.')}, was {rpc.input_type.lstrip('.')}",
                        "ackbus routes by message type: old senders' messages miss it",
                        "add a new rpc for the new type; keep the old one",
                    )
                )
            old_pol, new_pol = _effective(rpc, svc, old_msgs), _effective(nrpc, nsvc, new_msgs)
            old_kind, new_kind = old_pol.kind or "COMMAND", new_pol.kind or "COMMAND"
            old_key, new_key = old_pol.ordering_key or "", new_pol.ordering_key or ""
            if old_key != new_key:
                out.append(
                    Break(
                        where,
                        "ORDERING_KEY_CHANGED",
                        element,
                        f"its ordering key changed from {old_key or 'none'} to {new_key or 'none'}",
                        "old and new senders order its messages by different keys while both"
                        " run, so messages of one entity may run out of order or at once",
                        "drain the old senders before the new ones start, or add a new type",
                    )
                )
            if old_kind != new_kind:
                out.append(
                    Break(
                        where,
                        "KIND_CHANGED",
                        element,
                        f"its kind changed from {old_kind} to {new_kind}",
                        "old peers route and acknowledge it the other way",
                        "add a new message type for the new kind",
                    )
                )
    return out


def allowed(breaks: Iterable[Break], allow: Iterable[str]) -> list[Break]:
    """The breaks ``allow`` (rule names or element full names) does not accept."""
    accepted = set(allow)
    return [b for b in breaks if b.rule not in accepted and b.element not in accepted]
