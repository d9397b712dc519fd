"""``ackbus dead-letters``: list, show, replay and purge a store's dead letters.

These work beside a live owner of the store (SQLite lets another process read and write
a WAL database, PostgreSQL is shared anyway; the ownership lock is only for endpoints).
Replay sends each message again through a hub under a **new** message id: the receiver
may remember the old id (a permanent rejection is cached), and a replay is meant to run
the handler again. The envelope is kept as it was, so the receiver still sees the
original sender. A replayed message that is acked is removed from the dead letters; one
that fails again stays.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
from typing import Protocol

from ._schemas import Schemas, as_json
from ._types import DeliveryReport, Policy
from .errors import RemoteProtocolError, SchemaError, StoreError
from .store import DeadLetter, SqliteStore
from .store._open import postgres_store_class
from .wire import KIND_EVENT, MessageItem, encode_message

__all__ = [
    "DeadLetterStore",
    "describe",
    "error_text",
    "open_admin",
    "replay",
    "summary_line",
]


class DeadLetterStore(Protocol):
    """What the dead-letter commands need of a store (both stores have it)."""

    def dead_letters(self) -> list[DeadLetter]: ...

    def remove_dead_letters(self, ids: list[bytes]) -> int: ...


def open_admin(spec: str) -> DeadLetterStore:
    """``--store``: ``sqlite:///path.db``, a plain file path, or ``postgresql://...``
    (every service's dead letters in that schema)."""
    if spec.startswith(("postgresql:", "postgres:")):
        return postgres_store_class().from_url(spec)  # psycopg is an extra: imported here
    return SqliteStore.from_url(spec) if spec.startswith("sqlite:") else SqliteStore(spec)


_JSON = "json"


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def error_text(d: DeadLetter) -> str:
    """The last error's own words: the report's text without the type and id it starts
    with (``poker.StartHand 3f2a...: ``), which the list shows in columns of their own."""
    error = d.error
    for what in (d.msg_type, "message"):
        prefix = f"{what} {d.msg_id.hex()}: "
        if error.startswith(prefix):
            return error[len(prefix) :]
    return error


def summary_line(d: DeadLetter) -> str:
    """One line of ``dead-letters list``."""
    error = error_text(d)
    error = error if len(error) <= 100 else error[:97] + "..."
    return (
        f"{d.msg_id.hex()}  {_when(d.failed_at)}  {d.msg_type}  {d.reason}  "
        f"attempts={d.attempts}  {error}"
    )


def describe(d: DeadLetter, schemas: Schemas | None = None) -> str:
    """Everything ``dead-letters show`` prints about one dead letter. A protobuf body is
    decoded with its type's descriptor from ``schemas`` and shown as JSON; as hex when
    ``schemas`` does not know the type (saying how to make it known)."""
    lines = [
        f"id:          {d.msg_id.hex()}",
        f"type:        {d.msg_type}",
        f"destination: {d.destination}",
        f"kind:        {'event' if d.kind == KIND_EVENT else 'command'}",
        f"reason:      {d.reason}",
        f"attempts:    {d.attempts}",
        f"last error:  {error_text(d)}",
        f"created:     {_when(d.created_at)} UTC",
        f"failed:      {_when(d.failed_at)} UTC",
    ]
    try:
        item = MessageItem(d.frame, b"")
        env = item.envelope()
    except Exception as exc:  # a damaged row must not hide the others' details
        lines.append(f"body:        undecodable frame ({exc})")
        return "\n".join(lines)
    lines.append(f"sender:      {env.sender.service}/{env.sender.instance}")
    for key, value in sorted(env.headers.items()):
        lines.append(f"header:      {key}: {value}")
    body = item.body
    if env.content_encoding == _JSON:
        try:
            text = json.dumps(json.loads(body), indent=2, sort_keys=True)
        except (ValueError, RecursionError):
            text = repr(body)
        lines.append(f"body (JSON, {len(body)} bytes):\n{text}")
    else:
        lines.append(_protobuf_body(d.msg_type, body, schemas))
    return "\n".join(lines)


def _protobuf_body(msg_type: str, body: bytes, schemas: Schemas | None) -> str:
    head = f"body (protobuf {msg_type}, {len(body)} bytes"
    why = "give --import MODULE or -I DIR to decode it"
    if schemas is not None:
        try:
            return f"{head}, as JSON):\n{as_json(schemas.decode(msg_type, body))}"
        except SchemaError as exc:
            why = str(exc)
    shown = body[:512].hex(" ")
    more = " ..." if len(body) > 512 else ""
    return f"{head}; not decoded: {why}):\n{shown}{more}"


async def replay(
    store: DeadLetterStore, letters: list[DeadLetter], hub: str, *, timeout: float = 30.0
) -> list[tuple[DeadLetter, DeliveryReport]]:
    """Send ``letters`` again through ``hub``; remove those acked from the store."""
    from .endpoint import Endpoint

    for d in letters:  # before sending any: a damaged one stops the replay
        try:
            MessageItem(d.frame, b"")
        except RemoteProtocolError as exc:
            raise StoreError(
                f"dead letter {d.msg_id.hex()} cannot be replayed: its frame is damaged "
                f"({exc}); purge it"
            ) from None
    policy = Policy(deadline=timeout)
    results: list[tuple[DeadLetter, DeliveryReport]] = []
    # The connect wait is part of the timeout too (--timeout 3 waited 5 s for a hub that
    # was not there, connect_timeout's default).
    async with Endpoint("ackbus-replay", hub, policy=policy, connect_timeout=timeout) as ep:
        loop = asyncio.get_running_loop()
        for d in letters:
            item = MessageItem(d.frame, b"")
            new_id = os.urandom(16)
            now_ns = time.time_ns()
            frame = encode_message(
                new_id,
                item.type,
                item.body,
                envelope=item.envelope_bytes,
                recipient=item.recipient,
                kind=item.kind,
                priority=item.priority,
                flags=item.flags,
                created_at_ns=now_ns,
                sent_at_ns=now_ns,
                deadline_ns=now_ns + int(timeout * 1e9),
            )
            report = DeliveryReport(new_id, item.type)
            ep._track(report, frame, d.destination, item.kind, policy, loop.time())
            results.append((d, report))
        for _, report in results:
            await report.wait(timeout + 1.0)
    store.remove_dead_letters([d.msg_id for d, report in results if report])
    return results
