"""What the durable store keeps, as plain records, and the interface an endpoint uses.

The endpoint knows a store only through :class:`Store`: claim an identity, read back
what a previous run left (pending outbox rows, recent inbox records), and queue writes
on the store's group-commit writer. :class:`~ackbus.store.SqliteStore` (one file per
instance) and :class:`~ackbus.store.PostgresStore` (one database shared by a service's
instances) implement it; in-memory mode is "no store at all", so it costs the hot path
nothing.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ..errors import StoreError
from ._writer import Batch

if TYPE_CHECKING:
    from ._tx import Tx
    from ._unit import Transaction

__all__ = [
    "DeadLetter",
    "Durability",
    "InboxRecord",
    "OutboxRow",
    "Store",
    "matching",
    "parse_seconds",
]


class Durability(enum.Enum):
    """What a commit waits for before ``send`` returns or an ack goes out."""

    FULL = "full"
    """fsync at every commit (WAL, ``synchronous=FULL``): survives a process crash and a
    power loss. The default."""
    RELAXED = "relaxed"
    """No fsync at commit (WAL, ``synchronous=NORMAL``): survives a process crash; a power
    loss or OS crash may lose the last transactions before the next checkpoint."""


class OutboxRow(NamedTuple):
    """A message accepted by ``send`` and not yet acked or failed. A tuple in the column
    order of ``ackbus_outbox``: it is the INSERT's parameters as is."""

    msg_id: bytes
    msg_type: str
    destination: str
    kind: int
    request: bool
    policy: str
    """The message's :class:`~ackbus.Policy` as JSON."""
    created_at: float
    """Unix time ``send`` accepted it."""
    deadline: float
    """Unix time it fails unless acked."""
    frame: bytes
    """The wire item frame, attempt 1, exactly as first sent."""


class InboxRecord(NamedTuple):
    """The committed outcome of one handled message, in the column order of
    ``ackbus_inbox``."""

    msg_id: bytes
    outcome: int
    finished_at: float
    """Unix time the outcome committed."""
    response: bytes = b""
    error_type: str = ""
    error_message: str = ""
    error_permanent: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that failed for good, as ``ackbus dead-letters show`` prints it."""

    msg_id: bytes
    msg_type: str
    destination: str
    kind: int
    reason: str
    """"timeout", "rejected", "no-route", "expired"."""
    attempts: int
    error: str
    """The last error, as the sender's report said it."""
    created_at: float
    failed_at: float
    frame: bytes


def parse_seconds(name: str, values: list[str] | None, url: str) -> float | None:
    """A store URL's option of seconds (``?dead_letters_ttl=86400``): ``None`` if absent;
    ``ValueError`` naming it unless a positive number."""
    if not values:
        return None
    try:
        seconds = float(values[-1])
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(
            f"{name} must be a positive number of seconds, got {values[-1]!r} in {url!r}"
        )
    return seconds


def matching(letters: list[DeadLetter], prefix: str) -> list[DeadLetter]:
    """The dead letters whose hex id starts with ``prefix`` (any case)."""
    p = prefix.lower()
    return [d for d in letters if d.msg_id.hex().startswith(p)]


class Store(abc.ABC):
    """A durable home for a service instance's outbox, inbox and dead letters."""

    durability: Durability
    location: str
    """Where it lives, for messages (a path, or a URL without its password)."""
    takeover_every: float | None = None
    """Seconds between a running instance's looks for the outbox rows of its service's
    instances that are gone for good (:meth:`take_over`); ``None``: a store of one
    instance's own (SQLite's) has no siblings."""
    max_transactions: int | None = None
    """Live transactions the store can run at once (PostgreSQL: ``pool_size - 1``);
    ``None``: no bound (SQLite records a handler's statements and runs them in the group
    commit). An endpoint's default ``max_concurrency`` is at most this, so that the
    messages beyond it wait at the hub rather than for a connection."""
    dead_letters_ttl: float | None = None
    """Seconds a dead letter is kept before the endpoint prunes it (the URL's
    ``?dead_letters_ttl=``); ``None``: until purged or replayed."""

    @abc.abstractmethod
    def claim(self, service: str, instance: str | None) -> str:
        """Take exclusive ownership for this process and return the instance id kept in
        the store (created from ``instance`` or a fresh one on first use). Raises
        :class:`~ackbus.StoreError` if another live process owns it, or it belongs to
        another service or instance."""

    @abc.abstractmethod
    def pending_outbox(self) -> list[OutboxRow]:
        """Messages a previous run accepted and never settled, oldest first."""

    def keep_claim(self) -> bool:
        """See that this process still holds its claim, and take it again if it was
        lost with the connection that held it (a shared store's; on a worker thread,
        every second). ``True`` if it was taken again. A file's lock is never lost."""
        return False

    def take_over(self) -> list[OutboxRow]:
        """Adopt and return the pending outbox rows of the service's instances that are
        gone for good (called on a worker thread every :attr:`takeover_every`)."""
        return []

    @abc.abstractmethod
    def inbox_since(self, since: float, limit: int = -1) -> list[InboxRecord]:
        """Inbox records committed at or after Unix time ``since``, oldest first; only
        the newest ``limit`` if ``limit`` >= 0."""

    @abc.abstractmethod
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer; :meth:`write` works from now on."""

    @abc.abstractmethod
    def put_unit(self, unit: Transaction) -> Batch:
        """Queue a handler's unit of work (its inbox record, writes and sends) for the
        next group commit. If the inbox already holds the message id the unit is rolled
        back and ``unit.duplicate`` set; if one of its statements fails it is rolled back
        and ``unit.failed`` set; the rest of the batch commits either way."""

    def transaction(self, unit: Transaction) -> Tx:
        """The transaction code sees for ``unit`` (``ctx.tx``, ``ep.transaction()``):
        ``unit`` itself where statements are recorded and run at the commit (SQLite's
        form); a live one where the store has it (PostgreSQL's)."""
        return unit

    @abc.abstractmethod
    def put_outbox(self, row: OutboxRow) -> Batch: ...

    def put_outboxes(self, rows: list[OutboxRow]) -> Batch:
        """:meth:`put_outbox` for each of ``rows`` (``send_many``'s group), all in the
        one batch returned: they commit in one transaction or not at all. This default
        holds for a store whose batches are taken on the loop's thread (a writer on the
        loop, as PostgreSQL's); a store whose writer thread may take the open batch
        between two calls puts the rows in one operation instead (SQLite's)."""
        batches = {id(b): b for b in (self.put_outbox(row) for row in rows)}
        if len(batches) != 1:  # pragma: no cover - a store breaking the rule above
            raise StoreError(f"{self.location}: a group's rows went into several batches")
        return next(iter(batches.values()))

    @abc.abstractmethod
    def put_inbox(self, record: InboxRecord) -> Batch: ...

    @abc.abstractmethod
    def forget_outbox(self, msg_id: bytes) -> None:
        """The message was acked (lazy: no fsync, rides on the next commit)."""

    def forget_outboxes(self, msg_ids: Iterable[bytes]) -> None:
        """:meth:`forget_outbox` for each of ``msg_ids`` (an ack group's worth at once;
        stores may do it in one call)."""
        for msg_id in msg_ids:
            self.forget_outbox(msg_id)

    @abc.abstractmethod
    def dead_letter(self, msg_id: bytes, reason: str, attempts: int, error: str) -> None:
        """Move a failed message from the outbox to the dead letters (lazy)."""

    @abc.abstractmethod
    def prune_inbox(self, before: float) -> None:
        """Delete inbox records that finished before Unix time ``before`` (lazy)."""

    def prune_dead_letters(self, before: float) -> None:  # noqa: B027 - optional
        """Delete this store's dead letters that failed before Unix time ``before`` (lazy).
        A store that keeps none (the simulation's) ignores it."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Commit what is queued, close, release ownership. Idempotent."""
