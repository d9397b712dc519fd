"""Schema fingerprints: a short hash of a message type's shape, so that peers whose
generated code disagrees on a type notice it at run time (docs/protocol.md,
"Fingerprints").

:func:`fingerprint` is the first 8 bytes of SHA-256 over a canonical text of the type:
its full name, then each field in field-number order (number, name, label, type, the
full name of its message or enum type, its oneof), then, once each and in the order
first reached, every message and enum type its fields reach (nested, imported, map
entries), an enum as its full name and its values in number order (number, name). A
type reached again (recursion) is written as its name only. Not covered: options
(``message_policy`` included), comments, file names, packages other than in full
names, reserved ranges, the order of declarations in the ``.proto`` text, and default
values. So a field retyped, renumbered, renamed or removed, a message renamed, an enum
value changed all change the fingerprint; moving fields around in the file does not.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

__all__ = ["FP_HEADER", "canonical", "fingerprint"]

FP_HEADER = "fp"
"""The envelope header carrying the sender's fingerprint of the message's type (hex)."""

_cache: dict[Descriptor, bytes] = {}


def fingerprint(descriptor: Any) -> bytes:
    """The 8-byte fingerprint of message type ``descriptor`` (a message class's
    ``DESCRIPTOR``; module docstring); cached per descriptor."""
    desc = cast(Descriptor, descriptor)  # pure-Python and upb descriptors alike
    fp = _cache.get(desc)
    if fp is None:
        if len(_cache) >= 4096:
            _cache.clear()
        fp = _cache[desc] = hashlib.sha256(canonical(desc).encode()).digest()[:8]
    return fp


def canonical(desc: Descriptor) -> str:
    """The text :func:`fingerprint` hashes: one line per message, field, enum and value."""
    lines: list[str] = []
    seen: set[str] = set()
    todo: list[Descriptor | EnumDescriptor] = [desc]
    while todo:
        item = todo.pop(0)
        if item.full_name in seen:
            continue
        seen.add(item.full_name)
        if isinstance(item, EnumDescriptor):
            lines.append(f"enum {item.full_name}")
            lines.extend(f"  {v.number} {v.name}" for v in sorted(item.values, key=_number))
            continue
        lines.append(f"message {item.full_name}")
        for f in sorted(item.fields, key=_number):
            ref = ""
            if f.message_type is not None:
                ref = f.message_type.full_name
                todo.append(f.message_type)
            elif f.enum_type is not None:
                ref = f.enum_type.full_name
                todo.append(f.enum_type)
            oneof = f.containing_oneof.name if f.containing_oneof is not None else ""
            lines.append(f"  {f.number} {f.name} {_label(f)} {f.type} {ref} {oneof}".rstrip())
    return "\n".join(lines) + "\n"


def _number(d: FieldDescriptor | object) -> int:
    return int(getattr(d, "number"))  # noqa: B009 - fields and enum values alike


def _label(f: FieldDescriptor) -> str:
    if f.is_repeated:
        return "repeated"
    if f.is_required:
        return "required"
    return "optional" if f.has_presence else "singular"
