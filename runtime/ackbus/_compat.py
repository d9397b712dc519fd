"""Refusing messages from peers whose schema is incompatible with this endpoint's.

An endpoint given earlier versions of its schemas (``Endpoint(...,
schema_history=...)``: descriptor sets written by ``protoc --descriptor_set_out
--include_imports``) can tell which version a sender's message was written with: the
one whose fingerprint of the type (:mod:`ackbus._fingerprint`) is the message's ``fp``
header. :class:`SchemaHistory` then compares that version of the type with this
endpoint's by ``ackbus breaking``'s rules (``ackbus_codegen.breaking``, the
``ackbus[codegen]`` extra) and gives the reason to refuse it when they find a break in
the type (a field retyped, renumbered, removed without ``reserved``…): the receiver
answers Rejected, permanent, instead of acking a message its handler would misread. A
fingerprint no version in the history has, or a version without a break, is only logged
(docs/protocol.md, "Fingerprints").
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

from ._fingerprint import fingerprint
from .errors import SchemaError

__all__ = ["SchemaHistory"]

History = descriptor_pb2.FileDescriptorSet | str | Path


class SchemaHistory:
    """Earlier versions of the schemas (module docstring)."""

    def __init__(self, versions: History | Iterable[History]) -> None:
        if isinstance(versions, descriptor_pb2.FileDescriptorSet | str | Path):
            versions = [versions]
        self.sets: list[descriptor_pb2.FileDescriptorSet] = []
        for v in versions:
            if isinstance(v, descriptor_pb2.FileDescriptorSet):
                self.sets.append(v)
            else:
                self.sets.append(descriptor_pb2.FileDescriptorSet.FromString(Path(v).read_bytes()))
        try:
            from ackbus_codegen.breaking import compare
        except ImportError as err:
            raise SchemaError(
                "schema_history needs ackbus_codegen for the breaking rules: "
                "pip install 'ackbus[codegen]'"
            ) from err
        self._compare = compare
        self._pools: list[descriptor_pool.DescriptorPool] = []
        for s in self.sets:
            pool = descriptor_pool.DescriptorPool()
            for f in s.file:
                pool.Add(f)
            self._pools.append(pool)
        self._verdicts: dict[tuple[str, str, bytes], str | None] = {}

    def verdict(self, own: Any, sender_fp: str) -> str | None:
        """Why a message of type ``own`` (this endpoint's descriptor) whose sender's
        fingerprint is ``sender_fp`` (hex) must be refused; None when no version in the
        history has that fingerprint, or the breaking rules find no break in the type."""
        mine = fingerprint(own)
        key = (own.full_name, sender_fp, mine)
        if key in self._verdicts:
            return self._verdicts[key]
        why = self._verdicts[key] = self._judge(own, sender_fp, mine)
        return why

    def _judge(self, own: Any, sender_fp: str, mine: bytes) -> str | None:
        name = own.full_name
        for s, pool in zip(self.sets, self._pools, strict=True):
            try:
                theirs = pool.FindMessageTypeByName(name)
            except KeyError:
                continue
            if fingerprint(theirs).hex() != sender_fp:
                continue
            if theirs.file.name != own.file.name:
                return None  # moved to another file: nothing the rules compare
            breaks = [
                b
                for b in self._compare(s, _file_set(own.file), [own.file.name])
                if b.element == name or b.element.startswith(name + ".")
            ]
            if not breaks:
                return None
            said = "; ".join(f"{b.rule} {b.element}: {b.what}; {b.why}" for b in breaks)
            return (
                f"{name} written with an incompatible version of its schema (fingerprint "
                f"{sender_fp}, this receiver's {mine.hex()}): {said}"
            )
        return None


def _file_set(file: Any) -> descriptor_pb2.FileDescriptorSet:
    """``file`` and everything it imports, as a descriptor set (no source info)."""
    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(f: Any) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dep in f.dependencies:
            add(dep)
        f.CopyToProto(out.file.add())

    add(file)
    return out
