"""A handler's unit of work: its inbox record, its own writes and its sends, committed
as one (the transactional inbox).

The handler sees it as ``ctx.tx``, a :class:`Transaction` that only *records* writes:
nothing touches the database while the handler runs (a handler may await, and the
connection belongs to the writer thread). When the handler returns, the endpoint queues
the unit on the group-commit writer, which runs it inside a savepoint of the batch's
transaction::

    SAVEPOINT; INSERT inbox record; the handler's writes; INSERT its outbox rows; RELEASE

If the inbox insert finds the id already there (a duplicate the in-memory deduper no
longer remembered), or one of the handler's statements fails, the savepoint is rolled
back: none of the unit's writes or sends happen, and the rest of the batch commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ._base import InboxRecord, OutboxRow
from ._sqlite import INSERT_INBOX_STRICT, INSERT_OUTBOX, select_inbox

if TYPE_CHECKING:
    from .._report import DeliveryReport
    from ..core import Policy

__all__ = ["Deferred", "Transaction"]

Params = Sequence[Any] | Mapping[str, Any]

_NOT_IN_A_UNIT = frozenset(
    {"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "ATTACH", "DETACH", "VACUUM"}
)


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


class Transaction:
    """The writes a handler makes in the transaction of its message's inbox record.

    ``execute`` and ``executemany`` take any SQLite data statement (INSERT, UPDATE,
    DELETE, also ``CREATE TABLE IF NOT EXISTS``) with ``?`` or ``:name`` parameters. They
    run, in order, when the handler has returned without error, together with the inbox
    record: all of them or none, and never twice for one message id. They are not run
    when the handler raises. A handler cannot read through ``ctx.tx`` (its statements
    have not run yet): read with a connection of your own (WAL readers never block the
    writer) and make writes idempotent or conditional where they depend on what you read.
    Transaction control (BEGIN, COMMIT, SAVEPOINT, ...) is refused.
    """

    __slots__ = ("_open", "_sends", "_writes", "busy", "duplicate", "failed", "owner", "record")

    def __init__(self, owner: object) -> None:
        self.owner = owner
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

    def execute(self, sql: str, params: Params = ()) -> None:
        """Run ``sql`` with ``params`` in the unit's transaction when the handler returns."""
        self._check(sql)
        self._writing().append((sql, params))

    def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> None:
        """``execute`` once per parameter set."""
        self._check(sql)
        writes = self._writing()
        for params in seq_of_params:
            writes.append((sql, params))

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

    def _check(self, sql: str) -> None:
        if not self._open:
            raise RuntimeError("ctx.tx used after its handler returned; its unit is committed")
        words = sql.lstrip().split(None, 1)
        if not words:
            raise ValueError("empty SQL statement")
        if words[0].upper().rstrip(";") in _NOT_IN_A_UNIT:
            raise ValueError(
                f"{words[0].upper()} is not allowed in ctx.tx: the endpoint owns the "
                "transaction (it commits with the inbox record)"
            )

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
        assert record is not None
        conn.execute("SAVEPOINT ackbus_unit")
        try:
            conn.execute(INSERT_INBOX_STRICT, record)
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO ackbus_unit")
            conn.execute("RELEASE ackbus_unit")
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
