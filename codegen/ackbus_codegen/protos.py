"""Read-only views of the descriptors protoc hands a plugin.

protoc sends every file it parsed as a ``FileDescriptorProto``, dependencies included.
This module indexes them so the model can ask: which Python module and attribute path
holds type ``.poker.Card.Suit``, is a message a map entry, does a field track presence,
what comment and line does an element have. It knows nothing of what ackbus generates.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from google.protobuf import descriptor_pb2 as d

from .naming import is_reserved, module_for_proto

__all__ = ["Located", "ProtoFile", "TypeIndex", "TypeInfo", "has_presence", "is_required"]

FDP = d.FieldDescriptorProto

_SCALARS: dict[int, tuple[str, str]] = {
    FDP.TYPE_DOUBLE: ("float", "0.0"),
    FDP.TYPE_FLOAT: ("float", "0.0"),
    FDP.TYPE_INT64: ("int", "0"),
    FDP.TYPE_UINT64: ("int", "0"),
    FDP.TYPE_INT32: ("int", "0"),
    FDP.TYPE_FIXED64: ("int", "0"),
    FDP.TYPE_FIXED32: ("int", "0"),
    FDP.TYPE_UINT32: ("int", "0"),
    FDP.TYPE_SFIXED32: ("int", "0"),
    FDP.TYPE_SFIXED64: ("int", "0"),
    FDP.TYPE_SINT32: ("int", "0"),
    FDP.TYPE_SINT64: ("int", "0"),
    FDP.TYPE_BOOL: ("bool", "False"),
    FDP.TYPE_STRING: ("str", '""'),
    FDP.TYPE_BYTES: ("bytes", 'b""'),
}


def scalar_type(field: d.FieldDescriptorProto) -> tuple[str, str] | None:
    """``(python type, zero literal)`` for a scalar field, ``None`` for enums and messages."""
    return _SCALARS.get(field.type)


@dataclass(frozen=True, slots=True)
class Located:
    """A comment and a line number for one element of a .proto file."""

    comment: str
    line: int | None


class ProtoFile:
    """One ``FileDescriptorProto`` with its comments and lines by element path."""

    def __init__(self, proto: d.FileDescriptorProto) -> None:
        self.proto = proto
        self.name = proto.name
        self.module = module_for_proto(proto.name)
        self.syntax = proto.syntax or "proto2"
        self._locations = {tuple(loc.path): loc for loc in proto.source_code_info.location}

    def at(self, path: Sequence[int]) -> Located:
        loc = self._locations.get(tuple(path))
        if loc is None:
            return Located("", None)
        text = loc.leading_comments or loc.trailing_comments
        return Located(_clean_comment(text), loc.span[0] + 1 if loc.span else None)

    def where(self, *paths: Sequence[int]) -> str:
        """``file.proto:12`` for the first of ``paths`` protoc gave a line for (or just
        the file)."""
        for path in paths:
            line = self.at(path).line
            if line is not None:
                return f"{self.name}:{line}"
        return self.name

    @property
    def doc(self) -> str:
        """The file's comment: the one above ``syntax``, or above ``package``."""
        for path in ((12,), (2,)):
            loc = self._locations.get(path)
            if loc is not None:
                text = loc.leading_comments or "\n\n".join(loc.leading_detached_comments)
                if text.strip():
                    return _clean_comment(text)
        return ""


def _clean_comment(text: str) -> str:
    return textwrap.dedent(text).strip()


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """Where a message or enum lives, for code outside its module."""

    full_name: str
    """Without the leading dot: ``poker.Card.Suit``."""
    file: ProtoFile
    attr_path: str
    """Attribute path inside the ``_pb2`` module: ``Card.Suit``."""
    path: tuple[int, ...]
    """Source-code-info path of its declaration."""
    message: d.DescriptorProto | None = None
    enum: d.EnumDescriptorProto | None = None

    @property
    def reserved(self) -> bool:
        """Whether a component of its name is a Python keyword (protoc's class is then
        only reachable with ``getattr`` and mypy-protobuf renames it)."""
        return any(is_reserved(part) for part in self.attr_path.split("."))

    @property
    def is_map_entry(self) -> bool:
        return self.message is not None and self.message.options.map_entry


class TypeIndex:
    """Every message and enum in a request, by full name."""

    def __init__(self, files: Sequence[d.FileDescriptorProto]) -> None:
        self.files = {f.name: ProtoFile(f) for f in files}
        self._types: dict[str, TypeInfo] = {}
        for pf in self.files.values():
            prefix = f"{pf.proto.package}." if pf.proto.package else ""
            for i, msg in enumerate(pf.proto.message_type):
                self._add_message(pf, prefix, "", msg, (4, i))
            for i, enum in enumerate(pf.proto.enum_type):
                self._add(TypeInfo(prefix + enum.name, pf, enum.name, (5, i), enum=enum))

    def _add(self, info: TypeInfo) -> None:
        self._types[info.full_name] = info

    def _add_message(
        self,
        pf: ProtoFile,
        prefix: str,
        outer: str,
        msg: d.DescriptorProto,
        path: tuple[int, ...],
    ) -> None:
        attr = f"{outer}{msg.name}"
        self._add(TypeInfo(prefix + attr, pf, attr, path, message=msg))
        for i, nested in enumerate(msg.nested_type):
            self._add_message(pf, prefix, attr + ".", nested, (*path, 3, i))
        for i, enum in enumerate(msg.enum_type):
            name = f"{attr}.{enum.name}"
            self._add(TypeInfo(prefix + name, pf, name, (*path, 4, i), enum=enum))

    def __getitem__(self, type_name: str) -> TypeInfo:
        """Look up a field's ``type_name`` (``.poker.Card``) or a full name."""
        return self._types[type_name.removeprefix(".")]

    def get(self, type_name: str) -> TypeInfo | None:
        """:meth:`__getitem__`, or ``None`` for a type the request does not hold."""
        return self._types.get(type_name.removeprefix("."))

    def types(self) -> Iterator[TypeInfo]:
        """Every message and enum, file by file in source order."""
        yield from self._types.values()

    def messages_of(self, file_name: str) -> Iterator[TypeInfo]:
        """The messages declared in one file, nested ones included, in source order."""
        for info in self._types.values():
            if info.file.name == file_name and info.message is not None:
                yield info


def _feature_presence(pf: ProtoFile, field: d.FieldDescriptorProto) -> int:
    """Field presence of an editions field, resolved as mypy-protobuf resolves it
    (field feature, else file feature, else the editions default: explicit)."""
    if field.options.features.HasField("field_presence"):
        return field.options.features.field_presence
    if pf.proto.options.features.HasField("field_presence"):
        return pf.proto.options.features.field_presence
    return d.FeatureSet.EXPLICIT


def is_required(pf: ProtoFile, field: d.FieldDescriptorProto) -> bool:
    if field.label == FDP.LABEL_REQUIRED:
        return True
    return pf.syntax == "editions" and _feature_presence(pf, field) == d.FeatureSet.LEGACY_REQUIRED


def has_presence(pf: ProtoFile, field: d.FieldDescriptorProto) -> bool:
    """Whether a singular field knows "unset" from its zero value."""
    if field.label == FDP.LABEL_REPEATED:
        return False
    if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_GROUP) or field.HasField("oneof_index"):
        return True
    if pf.syntax == "proto3":
        return field.proto3_optional
    if pf.syntax == "editions":
        return _feature_presence(pf, field) != d.FeatureSet.IMPLICIT
    return True
