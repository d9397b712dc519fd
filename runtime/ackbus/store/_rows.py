"""Rows read back from a store, checked: a row that is not what ackbus wrote is a
:class:`~ackbus.StoreError` naming it, never another exception further on.

SQLite keeps any value in any column (a BLOB where TEXT was declared, text in a REAL
column), and ``PRAGMA quick_check`` at open checks the file's structure, not its values.
So every column of every row read back is checked here before the runtime uses it: ids
are 16 bytes, times Unix times (1970 to 9999), outcomes and kinds known values, a policy
the JSON :func:`policy_json` writes with values a :class:`~ackbus.Policy` accepts, and an
outbox row's frame a message item of that very id, type and kind (it is sent as it is).
Reading back happens at start and per dead-letter command, so checking costs little.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any, Final

from ..core import Kind, Outcome, Policy, SubscriberPolicy
from ..errors import LocalProtocolError, RemoteProtocolError, SchemaError, StoreError
from ..wire import ID_SIZE, KIND_COMMAND, KIND_EVENT, MessageItem, check_name
from ._base import DeadLetter, InboxRecord, OutboxRow

__all__ = ["dead_letter", "inbox_record", "outbox_row", "policy_from_json", "policy_json"]

_OUTCOMES: Final = frozenset(int(o) for o in Outcome)
_KINDS: Final = frozenset((KIND_COMMAND, KIND_EVENT))
"""A row's kind: the wire's (a policy's kind is a :class:`Kind`'s value, a string)."""
_POLICY_KINDS: Final = {k.value: k for k in Kind}
_POLICY_FIELDS: Final = {f.name: f for f in dataclasses.fields(Policy) if f.init}
_LAST_TIME: Final = 253_402_300_799.0
"""9999-12-31 23:59:59 UTC."""
_INT_RANGES: Final = {
    "max_attempts": (1, 2**32 - 1),
    "priority": (-(2**15), 2**15 - 1),
    "compress_above": (0, 2**32 - 1),
}


def policy_json(pol: Policy) -> str:
    """A policy as an outbox row keeps it: its fields as JSON, the kind as its value."""
    fields = dataclasses.asdict(pol)
    fields["kind"] = pol.kind.value
    del fields["life"]  # derived from the deadlines
    return json.dumps(fields, separators=(",", ":"))


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON has")


def policy_from_json(text: object, where: str) -> Policy:
    """The :class:`Policy` of :func:`policy_json` text; :class:`StoreError` if it is not."""
    if not isinstance(text, str):
        raise _bad(where, f"policy is {type(text).__name__}, not JSON text")
    try:
        fields = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _bad(where, f"policy is not JSON: {exc}") from None
    if not isinstance(fields, dict) or not set(fields) <= set(_POLICY_FIELDS):
        raise _bad(where, f"policy {text[:200]!r} is not a policy's fields")
    values: dict[str, Any] = {}
    for name, value in fields.items():
        default = _POLICY_FIELDS[name].default
        if name == "kind":
            if not isinstance(value, str) or value not in _POLICY_KINDS:
                raise _bad(where, f"policy kind {value!r} is not a kind")
            values[name] = _POLICY_KINDS[value]
        elif name == "subscribers":
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise _bad(where, f"policy subscribers {value!r} are not names")
            values[name] = tuple(value)
        elif name == "subscriber_policies":
            values[name] = _subscriber_policies(value, where)
        elif name == "ordering_key":
            if not isinstance(value, str):
                raise _bad(where, f"policy ordering_key {value!r} is not a field path")
            values[name] = value
        elif isinstance(default, bool):
            if type(value) is not bool:
                raise _bad(where, f"policy {name} {value!r} is not true or false")
            values[name] = value
        elif isinstance(default, int):
            low, high = _INT_RANGES.get(name, (-(2**63), 2**63 - 1))
            if type(value) is not int or not low <= value <= high:
                raise _bad(where, f"policy {name} {value!r} is not an integer in [{low}, {high}]")
            values[name] = value
        else:
            values[name] = _number(value, where, f"policy {name}")
    try:
        return Policy(**values)
    except SchemaError as exc:
        raise _bad(where, str(exc)) from None


def _subscriber_policies(value: object, where: str) -> tuple[SubscriberPolicy, ...]:
    """A policy's ``subscriber_policies`` as :func:`policy_json` writes them, checked."""
    if not isinstance(value, list):
        raise _bad(where, f"policy subscriber_policies {value!r} are not a list")
    out = []
    for sp in value:
        if not isinstance(sp, dict) or set(sp) != {"service", "max_attempts", "deadline"}:
            raise _bad(where, f"policy subscriber policy {sp!r} is not one")
        service, attempts, deadline = sp["service"], sp["max_attempts"], sp["deadline"]
        if not isinstance(service, str):
            raise _bad(where, f"policy subscriber {service!r} is not a name")
        if attempts is not None and (type(attempts) is not int or not 1 <= attempts < 2**32):
            raise _bad(where, f"policy subscriber max_attempts {attempts!r} is not one")
        if deadline is not None:
            deadline = _number(deadline, where, "policy subscriber deadline")
        try:
            out.append(SubscriberPolicy(service, attempts, deadline))
        except SchemaError as exc:
            raise _bad(where, str(exc)) from None
    return tuple(out)


def outbox_row(r: Sequence[object], where: str) -> OutboxRow:
    """An ``ackbus_outbox`` row (id, type, destination, kind, request, policy,
    created_at, deadline, frame), checked."""
    msg_id, msg_type, destination, kind, request, policy, created, deadline, frame = r
    mid, name, dest, kind_, frame = _message(msg_id, msg_type, destination, kind, frame, where)
    if type(request) is not int or request not in (0, 1):
        raise _bad(where, f"request {request!r} is not 0 or 1")
    if not isinstance(policy, str):
        raise _bad(where, f"policy is {type(policy).__name__}, not JSON text")
    policy_from_json(policy, where)
    return OutboxRow(
        mid,
        name,
        dest,
        kind_,
        bool(request),
        policy,
        _time(created, where, "created_at"),
        _time(deadline, where, "deadline"),
        frame,
    )


def _message(
    msg_id: object, msg_type: object, destination: object, kind: object, frame: object, where: str
) -> tuple[bytes, str, str, int, bytes]:
    """The columns an outbox row and a dead letter share: id, type, destination, kind
    and the frame, which must be a message item of that id, type and kind."""
    mid = _id(msg_id, where)
    name = _name(msg_type, where, "type")
    dest = _name(destination, where, "destination", empty_ok=True)
    if type(kind) is not int or kind not in _KINDS:
        raise _bad(where, f"kind {kind!r} is not a message kind")
    if not isinstance(frame, bytes):
        raise _bad(where, f"frame is {type(frame).__name__}, not a BLOB")
    try:
        item = MessageItem(frame, b"")
    except RemoteProtocolError as exc:
        raise _bad(where, f"frame is not a message item: {exc}") from None
    if (item.id, item.type, item.kind) != (mid, name, kind):
        raise _bad(where, "frame is not the row's message (id, type or kind differ)")
    return mid, name, dest, kind, frame


def inbox_record(r: Sequence[object], where: str) -> InboxRecord:
    """An ``ackbus_inbox`` row (id, outcome, finished_at, response, error type, error
    message, error permanent), checked."""
    msg_id, outcome, finished, response, error_type, error_message, permanent = r
    if type(outcome) is not int or outcome not in _OUTCOMES:
        raise _bad(where, f"outcome {outcome!r} is not an outcome")
    if not isinstance(response, bytes):
        raise _bad(where, f"response is {type(response).__name__}, not a BLOB")
    if not isinstance(error_type, str) or not isinstance(error_message, str):
        raise _bad(where, "error type and message are not TEXT")
    if type(permanent) is not int or permanent not in (0, 1):
        raise _bad(where, f"error_permanent {permanent!r} is not 0 or 1")
    return InboxRecord(
        _id(msg_id, where),
        outcome,
        _time(finished, where, "finished_at"),
        response,
        error_type,
        error_message,
        bool(permanent),
    )


def dead_letter(r: Sequence[object], where: str) -> DeadLetter:
    """An ``ackbus_dead_letters`` row, checked (its frame is shown and replayed: it
    must be a message item, as an outbox row's)."""
    msg_id, msg_type, destination, kind, reason, attempts, error, created, failed, frame = r
    mid, name, dest, kind_, frame = _message(msg_id, msg_type, destination, kind, frame, where)
    if not isinstance(reason, str) or not isinstance(error, str):
        raise _bad(where, "reason and error are not TEXT")
    if type(attempts) is not int or attempts < 0:
        raise _bad(where, f"attempts {attempts!r} is not a count")
    created_at = _time(created, where, "created_at")
    return DeadLetter(
        mid, name, dest, kind_, reason, attempts, error, created_at,
        _time(failed, where, "failed_at"), frame,
    )  # fmt: skip


def _id(value: object, where: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != ID_SIZE:
        raise _bad(where, f"id {value!r:.60} is not {ID_SIZE} bytes")
    return value


def _name(value: object, where: str, what: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise _bad(where, f"{what} is {type(value).__name__}, not TEXT")
    try:
        check_name(value, what, empty_ok=empty_ok)
    except LocalProtocolError as exc:
        raise _bad(where, str(exc)) from None
    return value


def _number(value: object, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(where, f"{what} {value!r:.60} is not a finite number")
    return float(value)


def _time(value: object, where: str, what: str) -> float:
    """A Unix time ackbus wrote: from 1970 to the year 9999 (what a datetime can show)."""
    t = _number(value, where, what)
    if not 0 <= t <= _LAST_TIME:
        raise _bad(where, f"{what} {t!r} is not a Unix time")
    return t


def _bad(where: str, problem: str) -> StoreError:
    return StoreError(
        f"{where}: {problem}. The row is not one ackbus wrote: delete that row (sqlite3) "
        "or move the file aside"
    )
