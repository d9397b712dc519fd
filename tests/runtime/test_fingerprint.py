"""Schema fingerprints (ackbus._fingerprint): stable across pools and declaration
order, different for a retyped or renumbered field, a renamed message or field, a
changed nested type or enum value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ackbus._compat import SchemaHistory
from ackbus._fingerprint import canonical, fingerprint
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

Field = tuple[str, int, int, str]  # name, number, type, type_name ("" for scalars)


def _file(
    fields: list[Field],
    *,
    name: str = "Deposit",
    nested: list[Field] | None = None,
    colors: tuple[str, ...] = ("RED", "BLUE"),
) -> Any:
    """The descriptor of ``bank.<name>`` built in a pool of its own (as two programs
    generated from two versions of a schema have it)."""
    proto = descriptor_pb2.FileDescriptorProto(name="bank.proto", package="bank", syntax="proto3")
    msg = proto.message_type.add(name=name)
    for fname, number, ftype, type_name in fields:
        field = msg.field.add(name=fname, number=number, type=ftype, label=F.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name
    amount = proto.message_type.add(name="Amount")
    for fname, number, ftype, _ in nested or [("cents", 1, F.TYPE_UINT64, "")]:
        amount.field.add(name=fname, number=number, type=ftype, label=F.LABEL_OPTIONAL)
    color = proto.enum_type.add(name="Color")
    for i, value in enumerate(colors):
        color.value.add(name=value, number=i)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool.FindMessageTypeByName(f"bank.{name}")


BASE: list[Field] = [
    ("account", 1, F.TYPE_STRING, ""),
    ("amount_cents", 2, F.TYPE_UINT64, ""),
    ("amount", 3, F.TYPE_MESSAGE, ".bank.Amount"),
    ("color", 4, F.TYPE_ENUM, ".bank.Color"),
]


def test_the_same_schema_in_two_pools_has_one_fingerprint_of_eight_bytes() -> None:
    a, b = _file(BASE), _file(BASE)
    assert a is not b
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 8


def test_the_order_of_declarations_does_not_count() -> None:
    assert fingerprint(_file(BASE)) == fingerprint(_file(list(reversed(BASE))))


def test_a_retyped_field_changes_it() -> None:
    retyped = [
        ("amount_cents", 2, F.TYPE_STRING, "") if f[0] == "amount_cents" else f for f in BASE
    ]
    assert fingerprint(_file(retyped)) != fingerprint(_file(BASE))


def test_a_renamed_message_changes_it() -> None:
    assert fingerprint(_file(BASE, name="Payment")) != fingerprint(_file(BASE))


def test_a_renumbered_renamed_or_removed_field_changes_it() -> None:
    base = fingerprint(_file(BASE))
    renumbered = [("account", 9, F.TYPE_STRING, ""), *BASE[1:]]
    renamed = [("owner", 1, F.TYPE_STRING, ""), *BASE[1:]]
    assert fingerprint(_file(renumbered)) != base
    assert fingerprint(_file(renamed)) != base
    assert fingerprint(_file(BASE[1:])) != base


def test_a_change_in_a_reached_message_or_enum_changes_it() -> None:
    base = fingerprint(_file(BASE))
    assert fingerprint(_file(BASE, nested=[("cents", 1, F.TYPE_INT64, "")])) != base
    assert fingerprint(_file(BASE, colors=("RED", "GREEN"))) != base


def test_the_canonical_text_is_what_the_docs_say() -> None:
    text = canonical(_file(BASE))
    assert text.splitlines() == [
        "message bank.Deposit",
        "  1 account singular 9",
        "  2 amount_cents singular 4",
        "  3 amount optional 11 bank.Amount",
        "  4 color singular 14 bank.Color",
        "message bank.Amount",
        "  1 cents singular 4",
        "enum bank.Color",
        "  0 RED",
        "  1 BLUE",
    ]


def test_a_history_read_from_a_file_judges_by_the_breaking_rules(tmp_path: Path) -> None:
    old = _file(BASE)
    retyped = [
        ("amount_cents", 2, F.TYPE_STRING, "") if f[0] == "amount_cents" else f for f in BASE
    ]
    new = _file(retyped)
    added = _file([*BASE, ("memo", 5, F.TYPE_STRING, "")])
    saved = descriptor_pb2.FileDescriptorSet()
    old.file.CopyToProto(saved.file.add())
    path = tmp_path / "v1.binpb"
    path.write_bytes(saved.SerializeToString())
    history = SchemaHistory(path)
    why = history.verdict(new, fingerprint(old).hex())
    assert why is not None
    assert "FIELD_RETYPED bank.Deposit.amount_cents" in why
    assert history.verdict(added, fingerprint(old).hex()) is None  # a field added
    assert history.verdict(new, "00" * 8) is None  # a version the history lacks
