"""A handler's unit of work: its inbox record, its own writes and its sends, committed
as one (the transactional inbox); also the user's own transaction
(``ep.transaction()``), which is the same without an inbox record.

On SQLite the handler sees it as ``ctx.tx``, a :class:`Transaction` that only *records*
writes: nothing touches the database while the handler runs (a handler may await, and the
connection belongs to the writer thread). When the handler returns, the endpoint queues
the unit on the group-commit writer, which runs it inside a savepoint of the batch's
transaction::

    SAVEPOINT; INSERT inbox record; the handler's writes; INSERT its outbox rows; RELEASE

If the inbox insert finds the id already there (a duplicate the in-memory deduper no
longer remembered), or one of the handler's statements fails, the savepoint is rolled
back: none of the unit's writes or sends happen, and the rest of the batch commits.
(On PostgreSQL ``ctx.tx`` is live, :class:`~ackbus.store._pg_tx.PgTransaction`, and the
unit only carries the record and the sends.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..errors import StoreError
from ._base import InboxRecord, OutboxRow
from ._sqlite import INSERT_INBOX_STRICT, INSERT_OUTBOX, select_inbox, stored_inbox
from ._tx import RECORDED, BlockingResult, Params, Recorded, Tx, check_sql

if TYPE_CHECKING:
    from .._report import DeliveryReport
    from .._types import AsyncBus
    from ..core import Policy

__all__ = ["Deferred", "Transaction"]


class Deferred:
    """A message sent from inside a handler: on disk with the unit, sent after it."""

    __slots__ = ("destination", "frame", "kind", "policy", "report", "row")

    def __init__(
        self,
        row: OutboxRow,
        report: DeliveryReport,
        destination: str,
        kind: int,
        policy: Policy,
    ) -> None:
        self.row = row
        self.report = report
        self.frame = row.frame
        self.destination = destination
        self.kind = kind
        self.policy = policy


class Transaction(Tx):
    """The writes a handler makes in the transaction of its message's inbox record.

    ``execute`` and ``executemany`` take any SQLite data statement (INSERT, UPDATE,
    DELETE, also ``CREATE TABLE IF NOT EXISTS``) with ``?`` or ``:name`` parameters. They
    run, in order, when the handler has returned without error, together with the inbox
    record: all of them or none, and never twice for one message id. They are not run
    when the handler raises. A handler cannot read through ``ctx.tx`` (its statements
    have not run yet): read with a connection of your own (WAL readers never block the
    writer) and make writes idempotent or conditional where they depend on what you read.
    Transaction control (BEGIN, COMMIT, SAVEPOINT, ...) is refused. ``execute`` returns
    an awaitable with nothing to read, so ``await ctx.tx.execute(...)`` is written as on
    PostgreSQL (and a plain call still records).
    """

    __slots__ = (
        "_open",
        "_sends",
        "_writes",
        "bus",
        "busy",
        "duplicate",
        "failed",
        "owner",
        "record",
    )

    def __init__(self, owner: object, bus: AsyncBus | None = None) -> None:
        self.owner = owner
        self.bus = bus
        """The endpoint whose handler runs in this unit (sends of other endpoints do not join)."""
        self._open = True
        # Created on first use: most handlers neither write nor send (two lists per
        # handled message, for the garbage collector to walk until the commit).
        self._writes: list[tuple[str, Params]] | None = None
        self._sends: list[Deferred] | None = None
        self.record: InboxRecord | None = None
        self.duplicate: InboxRecord | None = None
        """Set by the commit: the inbox already had this id (its stored outcome)."""
        self.failed: Exception | None = None
        """Set by the commit: a statement of the handler failed; nothing of the unit ran."""
        self.busy: Exception | None = None
        """Set by the commit: another transaction held what the unit needed past the
        store's lock timeout, or a deadlock (a sibling instance committing the same
        message id, or rows of the handler's): nothing of the unit ran; retry later."""

    # -- the handler's side --------------------------------------------------------------

    @property
    def unit(self) -> Transaction:
        return self

    def execute(self, sql: str, params: Params = ()) -> Recorded:
        """Run ``sql`` with ``params`` in the unit's transaction when the handler returns."""
        check_sql(sql, self._open)
        self._writing().append((sql, params))
        return RECORDED

    def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> Recorded:
        """``execute`` once per parameter set."""
        check_sql(sql, self._open)
        writes = self._writing()
        for params in seq_of_params:
            writes.append((sql, params))
        return RECORDED

    async def rows(self, sql: str, params: Params = ()) -> BlockingResult:
        """Records ``sql``: a :class:`BlockingResult` with no rows to read."""
        self.execute(sql, params)
        return BlockingResult(-1, None)

    @property
    def open(self) -> bool:
        """Whether the handler still runs (writes and sends still join the unit)."""
        return self._open

    @property
    def writes(self) -> Sequence[tuple[str, Params]]:
        """The handler's statements, in order (read by the store's commit)."""
        return self._writes or ()

    @property
    def statements(self) -> int:
        return len(self._writes or ())

    def _writing(self) -> list[tuple[str, Params]]:
        if self._writes is None:
            self._writes = []
        return self._writes

    # -- the endpoint's side -------------------------------------------------------------

    def add_send(self, deferred: Deferred) -> None:
        if self._sends is None:
            self._sends = []
        self._sends.append(deferred)

    @property
    def sends(self) -> Sequence[Deferred]:
        return self._sends or ()

    def close(self, record: InboxRecord | None) -> None:
        """The handler ended: ``record`` to commit, or ``None`` to drop writes and sends."""
        self._open = False
        self.record = record
        if record is None:
            self._writes = self._sends = None

    def seal(self) -> None:
        """The user's transaction block ended without error: commit it as it is (writes
        and sends, no inbox record)."""
        self._open = False

    @property
    def simple(self) -> bool:
        """Nothing but the inbox record (commits as a plain batched insert)."""
        return not self._writes and not self._sends

    @property
    def plain(self) -> bool:
        """Committed as it was: no duplicate found, no statement failed, no sends to
        transmit (the endpoint then answers exactly as in memory mode)."""
        return (
            self.duplicate is None and self.failed is None and self.busy is None and not self._sends
        )

    def __call__(self, conn: sqlite3.Connection) -> None:
        """Run in the writer thread, inside the batch's transaction."""
        record = self.record
        conn.execute("SAVEPOINT ackbus_unit")
        try:
            if record is not None:  # None: the user's own transaction
                conn.execute(INSERT_INBOX_STRICT, stored_inbox(record))
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO ackbus_unit")
            conn.execute("RELEASE ackbus_unit")
            assert record is not None
            try:
                self.duplicate = select_inbox(conn, record.msg_id)
            except StoreError as exc:  # the stored record is damaged: this message fails
                self.failed = exc
            return
        try:
            for sql, params in self._writes or ():
                conn.execute(sql, params)
            if self._sends:
                conn.executemany(INSERT_OUTBOX, [d.row for d in self._sends])
        except sqlite3.Error as exc:
            self.failed = exc
            conn.execute("ROLLBACK TO ackbus_unit")
        conn.execute("RELEASE ackbus_unit")
