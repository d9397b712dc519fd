"""Which field a generated stub was given the wrong value for.

protobuf's constructors say ``TypeError: bad argument type for built-in operation`` for a
``str`` given to an ``int`` field, without naming the field, and store a ``str`` given to a
``repeated string`` field letter by letter. Generated stubs build their message in a
``try`` (nothing more on the happy path) and, when the constructor raises, ask
:func:`field_error` for an error naming the field, what it takes and what it got; before
the constructor they refuse a ``str`` for a ``repeated string`` field (one ``isinstance``,
only for such fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["field_error"]

_F = FieldDescriptor
_SCALARS = {
    _F.TYPE_DOUBLE: "float",
    _F.TYPE_FLOAT: "float",
    _F.TYPE_INT64: "int (int64)",
    _F.TYPE_UINT64: "int (uint64)",
    _F.TYPE_INT32: "int (int32)",
    _F.TYPE_FIXED64: "int (fixed64)",
    _F.TYPE_FIXED32: "int (fixed32)",
    _F.TYPE_BOOL: "bool",
    _F.TYPE_STRING: "str",
    _F.TYPE_BYTES: "bytes",
    _F.TYPE_UINT32: "int (uint32)",
    _F.TYPE_SFIXED32: "int (sfixed32)",
    _F.TYPE_SFIXED64: "int (sfixed64)",
    _F.TYPE_SINT32: "int (sint32)",
    _F.TYPE_SINT64: "int (sint64)",
}


def field_error(
    message: type[Message], fields: Mapping[str, object], error: Exception | None = None
) -> Exception:
    """The error to raise when ``message(**fields)`` refused its arguments (``error``), or
    when a field's value must be refused before that (no ``error``): a ``TypeError`` (or
    the ``ValueError`` of a value out of range) naming the first field whose value is
    wrong, the type it takes and the value given. Without such a field, ``error`` with
    the message's name in front."""
    desc = cast(Descriptor, message.DESCRIPTOR)  # the C (upb) one behaves alike
    by_name = {f.name: f for f in desc.fields}
    for name, value in fields.items():
        field = by_name.get(name)
        if field is None or value is None:
            continue
        where = f"{desc.full_name}.{name}"
        got = f"got {type(value).__name__} {_short(value)}"
        wanted = _expected(field)
        if isinstance(value, str) and _is_list(field) and field.type == _F.TYPE_STRING:
            return TypeError(
                f"{where} takes {wanted}, {got}: it would be sent letter by letter; "
                f"pass [{_short(value)}]"
            )
        try:
            message(**{name: value})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ValueError):  # the right type, out of range or unknown
                return ValueError(f"{where} takes {wanted}, {got}: {exc}")
            return TypeError(f"{where} takes {wanted}, {got}")
    if error is None:
        return TypeError(f"{desc.full_name}: a field's value is wrong")
    return type(error)(f"{desc.full_name}: {error}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_list(field: FieldDescriptor) -> bool:
    return field.is_repeated and not _is_map(field)


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return field.is_repeated and entry is not None and entry.GetOptions().map_entry


def _expected(field: FieldDescriptor) -> str:
    if _is_map(field):
        key, value = cast(Descriptor, field.message_type).fields  # a map entry: key, value
        return f"a mapping of {_one(key)} to {_one(value)}"
    if field.is_repeated:
        return f"an iterable of {_one(field)}"
    return _one(field)


def _one(field: FieldDescriptor) -> str:
    if field.enum_type is not None:
        return f"a {field.enum_type.full_name} value (int or name)"
    if field.message_type is not None:
        return f"a {field.message_type.full_name} (or a dict of its fields)"
    return _SCALARS.get(field.type, "a value of its type")
