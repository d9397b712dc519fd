"""Message types by name, for the operator's commands (``ackbus send``, ``request``,
``dead-letters show``): from generated modules (``--import poker.table_pb2``) or compiled
from ``.proto`` files on the fly (``-I schemas``, needs ``ackbus[codegen]``).

:class:`Schemas` finds a message class by its full name, builds one from JSON
(``google.protobuf.json_format``) and prints one as JSON; each failure is a
:class:`~ackbus.errors.SchemaError` saying what to give instead, never a traceback.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message

from .errors import SchemaError

__all__ = ["Schemas", "as_dict", "as_json"]

_EMPTY = "google.protobuf.Empty"


class Schemas:
    """The message types the given modules and ``.proto`` folders define."""

    def __init__(self, imports: Sequence[str] = (), include: Sequence[Path] = ()) -> None:
        self.imports = list(imports)
        self.include = list(include)
        self._pools: list[DescriptorPool] = [descriptor_pool.Default()]
        for name in imports:
            try:
                importlib.import_module(name)
            except Exception as exc:  # ImportError, or a module that fails to load
                raise SchemaError(
                    f"cannot import {name}: {type(exc).__name__}: {exc} "
                    "(is its folder on PYTHONPATH? e.g. PYTHONPATH=generated)"
                ) from None
        self._compiled: list[FileDescriptor] = []
        if include:
            pool, self._compiled = _compile(include)
            self._pools.insert(0, pool)

    def descriptor(self, name: str) -> Descriptor:
        """The message type called ``name`` (``poker.StartHand``)."""
        for pool in self._pools:
            try:
                found: Descriptor = pool.FindMessageTypeByName(name)
            except KeyError:
                continue
            return found
        raise SchemaError(f"unknown message type {name!r}: {self._hint()}")

    def message_class(self, name: str) -> type[Message]:
        cls: type[Message] = message_factory.GetMessageClass(self.descriptor(name))
        return cls

    def from_json(self, name: str, text: str) -> Message:
        """A ``name`` message from its JSON form (proto3 JSON mapping: field names in
        lowerCamelCase or as in the .proto)."""
        msg = self.message_class(name)()
        try:
            json_format.Parse(text or "{}", msg)
        except json_format.ParseError as exc:
            raise SchemaError(f"cannot build {name} from {text!r}: {exc}") from None
        return msg

    def decode(self, name: str, body: bytes) -> Message:
        msg = self.message_class(name)()
        try:
            msg.ParseFromString(body)
        except DecodeError as exc:
            raise SchemaError(f"the body is not a valid {name}: {exc}") from None
        return msg

    def response_of(self, name: str) -> str | None:
        """The reply type of the rpc taking ``name``, if exactly one non-Empty reply
        type is declared for it (``poker.GetTableState`` → ``poker.TableState``)."""
        self.descriptor(name)
        found = {
            method.output_type.full_name
            for f in self._files()
            for service in f.services_by_name.values()
            for method in service.methods
            if method.input_type.full_name == name and method.output_type.full_name != _EMPTY
        }
        return found.pop() if len(found) == 1 else None

    def _files(self) -> list[FileDescriptor]:
        """The files whose services may name a type: those compiled from -I, and those
        of every generated module loaded (the imported ones and what they import)."""
        files = list(self._compiled)
        for module in list(sys.modules.values()):
            desc = getattr(module, "DESCRIPTOR", None)
            if isinstance(desc, FileDescriptor):
                files.append(desc)
        return files

    def _hint(self) -> str:
        given = []
        if self.imports:
            given.append(f"--import {' '.join(self.imports)}")
        if self.include:
            given.append(f"-I {' '.join(map(str, self.include))}")
        where = f"not defined by {' and '.join(given)}" if given else "no schemas given"
        return (
            f"{where}; give the generated module that defines it (--import poker.table_pb2, "
            "with its folder on PYTHONPATH) or the .proto folder (-I schemas)"
        )


def as_json(msg: Message) -> str:
    """``msg`` as indented JSON, every field shown (defaults too), names as in the .proto."""
    data = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(data, indent=2, sort_keys=True)


def as_dict(msg: Message) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return data


def _compile(include: Sequence[Path]) -> tuple[DescriptorPool, list[FileDescriptor]]:
    """Every ``.proto`` under the ``include`` folders, compiled with protoc into a pool of
    their own (ackbus's own files left to ackbus)."""
    try:
        from ackbus_codegen.errors import GenerationError
        from ackbus_codegen.protoc import descriptor_set
    except ImportError:
        raise SchemaError(
            "-I compiles .proto files, which needs the code generator: "
            "pip install 'ackbus[codegen]' (or give --import MODULE instead)"
        ) from None
    files: list[str] = []
    for root in include:
        if not root.is_dir():
            raise SchemaError(f"-I {root}: no such folder")
        for path in sorted(root.rglob("*.proto")):
            rel = path.relative_to(root).as_posix()
            if not rel.startswith(("ackbus/", "google/")):
                files.append(rel)
    if not files:
        raise SchemaError(f"no .proto files under {', '.join(map(str, include))}")
    try:
        fds = descriptor_set(files, list(include))
    except GenerationError as exc:
        raise SchemaError(str(exc)) from None
    pool = DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    return pool, [pool.FindFileByName(fd.name) for fd in fds.file]
