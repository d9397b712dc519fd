"""Reliability policies declared with ``ackbus/options.proto``, merged and checked.

The most specific level wins, field by field: method, then message, then service,
then the runtime's defaults. A field left unset at one level inherits from the next,
so the generated ``ackbus.Policy(...)`` names only what a schema set and the runtime
supplies the rest. Values are checked here, at generation time, so a bad option is an
error naming the schema line instead of an exception when a service imports the code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from ackbus import options_pb2

__all__ = ["PROTO_FIELDS", "RUNTIME_DEFAULTS", "PolicyOptions", "from_proto", "merge", "problems"]


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    """Policy fields set at one level (``None`` = inherit), named as ``ackbus.Policy``'s."""

    ack_timeout: float | None = None
    max_attempts: int | None = None
    backoff_base: float | None = None
    backoff_cap: float | None = None
    jitter: float | None = None
    deadline: float | None = None
    priority: int | None = None
    kind: str | None = None
    """``"COMMAND"`` or ``"EVENT"``: the ``ackbus.Kind`` member name."""
    retry_rejected: bool | None = None
    ordering_key: str | None = None
    """A field path of the message whose value orders it (checked against the
    message by the model, which knows its fields)."""
    compress_above: int | None = None
    """Bodies of at least this many bytes are compressed (zstandard); 0: never."""

    def items(self) -> list[tuple[str, float | int | bool | str]]:
        """The fields that are set, in declaration order."""
        out: list[tuple[str, float | int | bool | str]] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out.append((f.name, value))
        return out

    @property
    def is_event(self) -> bool:
        return self.kind == "EVENT"


# options.proto field -> PolicyOptions field
PROTO_FIELDS = {
    "ack_timeout_s": "ack_timeout",
    "max_attempts": "max_attempts",
    "backoff_base_s": "backoff_base",
    "backoff_cap_s": "backoff_cap",
    "jitter": "jitter",
    "deadline_s": "deadline",
    "priority": "priority",
    "kind": "kind",
    "retry_rejected": "retry_rejected",
    "ordering_key": "ordering_key",
    "compress_above": "compress_above",
}


def from_proto(policy: options_pb2.Policy) -> PolicyOptions:
    """The fields a schema set on one ``ackbus.Policy`` option."""
    values: dict[str, Any] = {}
    for field, value in policy.ListFields():
        name = PROTO_FIELDS[field.name]
        if name == "kind":
            if value == options_pb2.KIND_UNSPECIFIED:
                continue
            value = options_pb2.Kind.Name(value)
        values[name] = value
    return replace(PolicyOptions(), **values)


def merge(levels: Iterable[PolicyOptions]) -> PolicyOptions:
    """Merge levels given from the most to the least specific."""
    merged = PolicyOptions()
    for level in reversed(list(levels)):
        changes: dict[str, Any] = dict(level.items())
        merged = replace(merged, **changes)
    return merged


def problems(policy: PolicyOptions) -> list[str]:
    """What is wrong with ``policy`` once the runtime's defaults fill its gaps."""
    full = merge([policy, RUNTIME_DEFAULTS])
    ack_timeout, deadline = _num(full.ack_timeout), _num(full.deadline)
    base, cap, jitter = _num(full.backoff_base), _num(full.backoff_cap), _num(full.jitter)
    out = [
        f"{name} must be a finite number, got {value}"
        for name, value in (
            ("ack_timeout_s", ack_timeout),
            ("deadline_s", deadline),
            ("backoff_base_s", base),
            ("backoff_cap_s", cap),
            ("jitter", jitter),
        )
        if not math.isfinite(value)
    ]
    if not ack_timeout > 0:
        out.append(f"ack_timeout_s must be > 0, got {ack_timeout}")
    if not deadline > 0:
        out.append(f"deadline_s must be > 0, got {deadline}")
    if _num(full.max_attempts) < 1:
        out.append(f"max_attempts must be >= 1, got {full.max_attempts}")
    if not 0 <= base <= cap:
        out.append(f"need 0 <= backoff_base_s <= backoff_cap_s, got {base} and {cap}")
    if not 0 <= jitter <= 1:
        out.append(f"jitter must be within [0, 1], got {jitter}")
    return out


def _num(value: float | int | bool | str | None) -> float:
    assert isinstance(value, float | int), value
    return float(value)


# The runtime's defaults (ackbus.Policy), used only to check a merged policy whose
# fields are partly left to them; tests/codegen checks that they match the runtime.
RUNTIME_DEFAULTS = PolicyOptions(
    ack_timeout=1.0,
    max_attempts=10,
    backoff_base=0.05,
    backoff_cap=2.0,
    jitter=0.2,
    deadline=30.0,
    priority=0,
    kind="COMMAND",
    retry_rejected=False,
    ordering_key="",
    compress_above=0,
)
