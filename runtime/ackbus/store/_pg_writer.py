"""Group commit on PostgreSQL: one writer task on the event loop, one transaction per batch.

The PostgreSQL twin of :class:`~ackbus.store._writer.GroupWriter`, with the same
:class:`~ackbus.store._writer.Batch`: the loop appends operations to the one open batch,
releases it at the end of the loop iteration that opened it, and the writer task takes
the whole released batch whenever it is free, runs it as one transaction on a connection
from the pool (psycopg's async API: nothing blocks the loop) and finishes it. Batches
commit one after another, in order, so an outbox row is inserted before its "acked"
delete. A batch of lazy operations only commits with ``synchronous_commit = off``.

An operation is ``(statement, params)`` (a run of one statement object goes out as one
``executemany``, pipelined by psycopg) or a handler's :class:`~ackbus.store.Transaction`,
which runs in a savepoint: its inbox record first, ``INSERT ... ON CONFLICT DO NOTHING``
on the service's shared inbox. Finding the id there means a sibling instance (or this
one, earlier) committed the message already: the unit is rolled back and answered as a
duplicate. An insert that meets a sibling's uncommitted record of the same id waits for
that transaction (PostgreSQL's unique index decides): if the sibling commits, this is a
duplicate; if it rolls back or its connection dies, this one proceeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from ..errors import StoreError
from ._base import InboxRecord
from ._pg_schema import statement
from ._unit import Transaction
from ._writer import Batch

__all__ = ["CONTENDED", "AsyncConn", "PgOp", "PgStatements", "PgWriter", "inbox_record"]

log = logging.getLogger("ackbus.store")

PgOp = tuple[sql.Composed, Sequence[Any]] | Transaction
CONTENDED = (
    psycopg.errors.LockNotAvailable,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
)
"""Errors of a unit that another transaction caused: retried, not the handler's fault."""
AsyncConn = psycopg.AsyncConnection[TupleRow]


class PgStatements:
    """The write statements of one schema (built once: runs are grouped by identity)."""

    def __init__(self, schema: str, service: str, instance: str) -> None:
        self.service = service
        self.instance = instance
        self.insert_outbox = statement(
            "INSERT INTO {s}.outbox (id, type, destination, kind, request, policy,"
            " created_at, deadline, frame, service, instance)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            schema,
        )
        self.insert_inbox = statement(
            "INSERT INTO {s}.inbox (id, outcome, finished_at, response, error_type,"
            " error_message, error_permanent, service) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            schema,
        )
        self.claim_inbox = statement(
            "INSERT INTO {s}.inbox (id, outcome, finished_at, response, error_type,"
            " error_message, error_permanent, service) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            schema,
        )
        self.select_inbox = statement(
            "SELECT id, outcome, finished_at, response, error_type, error_message,"
            " error_permanent FROM {s}.inbox WHERE service = %s AND id = %s",
            schema,
        )
        self.delete_outbox = statement("DELETE FROM {s}.outbox WHERE id = ANY(%s)", schema)
        self.move_to_dead = statement(
            "INSERT INTO {s}.dead_letters (id, service, type, destination, kind, reason,"
            " attempts, error, created_at, failed_at, frame)"
            " SELECT id, service, type, destination, kind, %s, %s, %s, created_at, %s, frame"
            " FROM {s}.outbox WHERE id = %s ON CONFLICT (id) DO UPDATE SET"
            " reason = EXCLUDED.reason, attempts = EXCLUDED.attempts, error = EXCLUDED.error,"
            " failed_at = EXCLUDED.failed_at",
            schema,
        )
        self.prune_inbox = statement(
            "DELETE FROM {s}.inbox WHERE service = %s AND finished_at < %s", schema
        )
        self.prune_dead = statement(
            "DELETE FROM {s}.dead_letters WHERE service = %s AND failed_at < %s", schema
        )


class PgWriter:
    """The writer task and its pool (see the module docstring)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConn],
        statements: PgStatements,
        *,
        name: str,
        relaxed: bool,
        commit_timeout: float = 30.0,
    ) -> None:
        self._pool = pool
        self._sql = statements
        self._name = name
        self._relaxed = relaxed
        self._commit_timeout = commit_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: Batch | None = None
        self._ready: list[Batch] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.commits = 0
        self.ops = 0

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConn]:
        """The pool the writer commits through; live transactions borrow from it."""
        return self._pool

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task = loop.create_task(self._run(), name=self._name)

    def add(self, op: PgOp, *, durable: bool = True) -> Batch:
        """Append ``op`` to the open batch (on the loop's thread)."""
        batch = self._open
        if batch is None:
            if self._stopping or self._task is None or self._task.done():
                raise StoreError(
                    f"{self._name}: the store is closed"
                    if self._stopping
                    else f"{self._name}: the store is not started or its writer stopped"
                )
            loop = self._loop
            assert loop is not None
            batch = self._open = Batch()
            loop.call_soon(self._release, batch)
            batch._watchdog = loop.call_later(self._commit_timeout, self._expire, batch)
        batch.ops.append(op)
        if durable:
            batch.durable = True
        return batch

    def _release(self, batch: Batch) -> None:
        if self._open is batch:
            self._open = None
        self._ready.append(batch)
        self._wake.set()

    def _expire(self, batch: Batch) -> None:
        batch._finish(
            StoreError(
                f"{self._name}: no commit within {self._commit_timeout:.0f} s; PostgreSQL is "
                "not answering (the batch may still commit later)"
            )
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the task and close the pool."""
        self._stopping = True
        if self._open is not None:
            self._release(self._open)
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                log.error("%s: writer still busy after %.0f s; cancelled", self._name, timeout)
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 1.0)
        await self._pool.close(timeout=5.0)

    async def _run(self) -> None:
        await self._pool.open(wait=False)  # connects in the background; commits wait for it
        try:
            while True:
                while not self._ready:
                    if self._stopping:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                batch = self._ready.pop(0)
                await self._commit(batch)
        finally:
            gone = StoreError(f"{self._name}: the store's writer stopped")
            for batch in self._ready:
                batch._finish(gone)
            self._ready.clear()

    async def _commit(self, batch: Batch) -> None:
        batch._finish(await self._transact(batch))

    async def _transact(self, batch: Batch) -> BaseException | None:
        """Run ``batch`` as one transaction: ``None`` once committed, else the error."""
        try:
            pool = self._pool
            async with pool.connection(timeout=self._commit_timeout) as conn, conn.transaction():
                if not batch.durable and not self._relaxed:
                    await conn.execute("SET LOCAL synchronous_commit = off")
                await self._apply(conn, batch.ops)
        except Exception as exc:
            log.error(
                "%s: transaction of %d operations failed: %s", self._name, len(batch.ops), exc
            )
            return exc
        self.commits += 1
        self.ops += len(batch.ops)
        return None

    async def _apply(self, conn: AsyncConn, ops: list[PgOp]) -> None:
        i, n = 0, len(ops)
        while i < n:
            op = ops[i]
            if isinstance(op, Transaction):
                await self._unit(conn, op)
                i += 1
                continue
            statement = op[0]
            j = i + 1
            while j < n:
                nxt = ops[j]
                if isinstance(nxt, Transaction) or nxt[0] is not statement:
                    break
                j += 1
            if j == i + 1:
                await conn.execute(statement, op[1])
            else:
                async with conn.cursor() as cur:
                    await cur.executemany(statement, [o[1] for o in ops[i:j]])  # type: ignore[index]
            i = j

    async def _unit(self, conn: AsyncConn, unit: Transaction) -> None:
        """A handler's unit in a savepoint: inbox record, its writes, its outbox rows."""
        record = unit.record
        assert record is not None
        q = self._sql
        duplicate = False
        try:
            async with conn.transaction():
                cur = await conn.execute(q.claim_inbox, (*record, q.service))
                if await cur.fetchone() is None:
                    duplicate = True
                    raise psycopg.Rollback()
                for text, params in unit.writes:
                    await conn.execute(text, params)
                if unit.sends:
                    async with conn.cursor() as c:
                        await c.executemany(
                            q.insert_outbox, [(*d.row, q.service, q.instance) for d in unit.sends]
                        )
        except CONTENDED as exc:  # a sibling holds the record (or the handler's rows)
            unit.busy = exc
            return
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise  # the connection, not the handler's SQL: the whole batch fails
            unit.failed = exc
            return
        if duplicate:
            cur = await conn.execute(q.select_inbox, (q.service, record.msg_id))
            row = await cur.fetchone()
            # None: pruned since the insert saw it; answer with this run's outcome.
            unit.duplicate = inbox_record(row) if row is not None else record


def inbox_record(row: TupleRow) -> InboxRecord:
    return InboxRecord(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))
