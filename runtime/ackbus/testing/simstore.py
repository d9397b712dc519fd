"""A durable store in memory for the simulation: a disk that survives a node's crash,
with commits that take simulated time.

:class:`SimStore` implements the :class:`~ackbus.store.Store` interface that durable mode
(:class:`~ackbus.endpoint._durable.Durable`, the runtime's own class) uses, so a simulated
endpoint runs the real durable glue. What differs from :class:`~ackbus.store.SqliteStore`
is where rows live and when a commit completes:

* **The disk** is a few dicts (outbox, inbox, dead letters) on the store object, which the
  simulation keeps across a node's crash and hands to its next incarnation.
* **Group commit on the simulated clock.** Writes join the one open
  :class:`~ackbus.store._writer.Batch` (the real class); it is released at the end of the
  current simulated step, and the "writer" commits one batch at a time, each after a
  seeded latency. When the clock reaches the commit time the batch's rows reach the disk
  and its ``on_commit`` callbacks run, as the real writer's ``_finish`` does on the loop.
* **A crash** loses what the process held: the open batch, and every waiter and callback.
  The batch being committed at that moment either reached the disk (the fsync returned
  before the kill) or not; the store's seeded generator decides, per crash.

``observe(table, msg_id)`` (optional) is told of every outbox row and inbox record as it
reaches the disk: the simulation's ground truth of what a node committed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import StoreError
from ..store import InboxRecord, OutboxRow, Store, Transaction
from ..store._base import Durability
from ..store._writer import Batch, Op
from .simnet import SimNetwork

__all__ = ["SimStore"]

_Write = Callable[[], None]
"""One operation as the sim applies it to its disk."""


@dataclass(slots=True)
class _Pending:
    batch: Batch
    writes: list[_Write]
    released: bool = False


class SimStore(Store):
    """One simulated node's store (see the module docstring)."""

    durability = Durability.FULL

    def __init__(
        self,
        net: SimNetwork,
        rng: random.Random,
        *,
        latency: float = 0.005,
        land_at_crash: float = 0.5,
        location: str = "sim",
    ) -> None:
        self.net = net
        self.rng = rng
        self.latency = latency
        """Mean commit time, seconds (each commit takes between half and one and a half)."""
        self.land_at_crash = land_at_crash
        """Chance that the batch committing when the node crashes reached the disk."""
        self.location = location
        self.observe: Callable[[str, bytes], None] | None = None
        # The disk: what survives a crash.
        self.meta: dict[str, str] = {}
        self.outbox: dict[bytes, OutboxRow] = {}
        self.inbox: dict[bytes, InboxRecord] = {}
        self.dead: dict[bytes, tuple[OutboxRow, str, int, str]] = {}
        # The process: lost at a crash.
        self._open: _Pending | None = None
        self._committing: _Pending | None = None
        self._epoch = 0
        self._started = False
        self.commits = 0
        self.landed_at_crash = 0
        self.lost_at_crash = 0
        """Batches (being committed, or still open) a crash lost."""

    # -- the node's life (the simulation's side) ---------------------------------------------

    def crash(self) -> None:
        """The node died: the committing batch reached the disk or not; the rest is lost."""
        self._epoch += 1
        committing, self._committing = self._committing, None
        if committing is not None:
            if self.rng.random() < self.land_at_crash:
                self.landed_at_crash += 1
                self._apply(committing)
            else:
                self.lost_at_crash += 1
        if self._open is not None:
            self.lost_at_crash += 1
        self._open = None
        self._started = False

    @property
    def busy(self) -> bool:
        """A batch is open or committing (its waiters wait)."""
        return self._open is not None or self._committing is not None

    # -- Store: reading back and ownership ---------------------------------------------------

    def claim(self, service: str, instance: str | None) -> str:
        kept = self.meta.setdefault("service", service)
        if kept != service:
            raise StoreError(f"{self.location} belongs to service {kept!r}, not {service!r}")
        stored = self.meta.setdefault("instance", instance or f"{service}-sim")
        if instance is not None and instance != stored:
            raise StoreError(f"{self.location} belongs to instance {stored!r}, not {instance!r}")
        return stored

    def pending_outbox(self) -> list[OutboxRow]:
        return sorted(self.outbox.values(), key=lambda row: row.created_at)

    def inbox_since(self, since: float, limit: int = -1) -> list[InboxRecord]:
        records = sorted(
            (r for r in self.inbox.values() if r.finished_at >= since),
            key=lambda r: r.finished_at,
        )
        return records[-limit:] if limit >= 0 else records

    # -- Store: writes -------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._started = True

    def write(self, op: Op, *, durable: bool = True) -> Batch:
        if not isinstance(op, Transaction):
            raise TypeError(f"SimStore runs no SQL; it takes units of work, not {op!r}")
        unit = op
        if unit.statements:
            raise TypeError("SimStore runs no SQL: simulated handlers write nothing via ctx.tx")
        return self._add(lambda: self._apply_unit(unit))

    def put_unit(self, unit: Transaction) -> Batch:
        return self.write(unit)

    def put_outbox(self, row: OutboxRow) -> Batch:
        return self._add(lambda: self._insert_outbox(row))

    def put_inbox(self, record: InboxRecord) -> Batch:
        return self._add(lambda: self._insert_inbox(record))

    def forget_outbox(self, msg_id: bytes) -> None:
        def forget() -> None:
            self.outbox.pop(msg_id, None)

        self._add(forget)

    def dead_letter(self, msg_id: bytes, reason: str, attempts: int, error: str) -> None:
        def move() -> None:
            row = self.outbox.pop(msg_id, None)
            if row is not None:
                self.dead[msg_id] = (row, reason, attempts, error)

        self._add(move)

    def prune_inbox(self, before: float) -> None:
        def prune() -> None:
            for msg_id in [m for m, r in self.inbox.items() if r.finished_at < before]:
                del self.inbox[msg_id]

        self._add(prune)

    async def aclose(self) -> None:
        self._started = False

    # -- group commit on the simulated clock ------------------------------------------------

    def _add(self, write: _Write) -> Batch:
        if not self._started:
            raise StoreError(f"{self.location}: the store is not started (or its node crashed)")
        pending = self._open
        if pending is None:
            pending = self._open = _Pending(Batch(), [])
            # Released at the end of this step: what the step writes joins the batch.
            self.net.call_at(self.net.now, self._guard(self._release))
        pending.writes.append(write)
        return pending.batch

    def _guard(self, fn: Callable[[], None]) -> Callable[[float], None]:
        """``fn`` as a network event, void if the node crashed meanwhile."""
        epoch = self._epoch

        def event(now: float) -> None:
            if self._epoch == epoch:
                fn()

        return event

    def _release(self) -> None:
        if self._open is not None:
            self._open.released = True
        self._next()

    def _next(self) -> None:
        """The writer takes the open batch if it is free and the batch was released."""
        pending = self._open
        if self._committing is not None or pending is None or not pending.released:
            return
        self._open, self._committing = None, pending
        took = self.latency * self.rng.uniform(0.5, 1.5)
        self.net.call_at(self.net.now + took, self._guard(self._committed))

    def _committed(self) -> None:
        pending, self._committing = self._committing, None
        assert pending is not None
        self._apply(pending)
        pending.batch._finish(None)  # as the real writer reports a commit on the loop
        self._next()

    def _apply(self, pending: _Pending) -> None:
        self.commits += 1
        for write in pending.writes:
            write()

    # -- the rows -----------------------------------------------------------------------------

    def _insert_outbox(self, row: OutboxRow) -> None:
        if row.msg_id not in self.outbox:  # INSERT OR IGNORE
            self.outbox[row.msg_id] = row
            if self.observe is not None:
                self.observe("outbox", row.msg_id)

    def _insert_inbox(self, record: InboxRecord) -> None:
        self.inbox.setdefault(record.msg_id, record)  # INSERT OR IGNORE
        if self.observe is not None:  # a committed run, even if the id was there
            self.observe("inbox", record.msg_id)

    def _apply_unit(self, unit: Transaction) -> None:
        """A handler's unit: its inbox record (strict: a duplicate rolls it back) and
        its sends."""
        record = unit.record
        assert record is not None
        if record.msg_id in self.inbox:
            unit.duplicate = self.inbox[record.msg_id]
            return
        self._insert_inbox(record)
        for deferred in unit.sends:
            self._insert_outbox(deferred.row)
