"""A live transaction on PostgreSQL: ``ctx.tx`` in a handler, ``ep.transaction()`` outside.

A pooled connection inside ``BEGIN``, taken at the first statement (a handler that never
touches ``ctx.tx`` holds no connection: its inbox record goes through the group commit
as before) or at once for ``ep.transaction()``. The code reads and writes through it
while it runs (``await tx.execute(...)`` returns psycopg's cursor; ``await
tx.connection()`` is the connection itself). At the end :meth:`PgTransaction.commit`
claims the message's inbox record in the same transaction (``INSERT ... ON CONFLICT DO
NOTHING RETURNING``: found, the message committed before, here or on a sibling, and the
whole transaction rolls back), inserts the outbox rows of the messages sent in it, and
commits. The connection then goes back to the pool; how many transactions hold one at
once is bounded by the store (``PostgresStore.max_transactions``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

from ..errors import RetryLater, StoreError
from ._base import InboxRecord
from ._pg_writer import CONTENDED, AsyncConn, inbox_record
from ._tx import BlockingResult, Params, Tx, check_sql

if TYPE_CHECKING:
    from psycopg import AsyncCursor
    from psycopg.rows import TupleRow

    from ._pg import PostgresStore
    from ._unit import Transaction

__all__ = ["PgTransaction"]

log = logging.getLogger("ackbus.store")


class PgTransaction(Tx):
    """``ctx.tx`` and ``ep.transaction()`` on PostgreSQL (see the module docstring).

    ``execute`` and ``executemany`` take PostgreSQL's SQL with psycopg's parameters
    (``%s``, ``%(name)s``); transaction control (BEGIN, COMMIT, SAVEPOINT, ...) is
    refused, since ackbus commits. A statement that fails raises at once (psycopg's
    error) and leaves the transaction aborted: the handler's message is then not acked
    (retried), a user's transaction raises at its end."""

    __slots__ = ("_conn", "_lock", "_lost", "_store", "_unit", "bus")

    def __init__(self, unit: Transaction, store: PostgresStore) -> None:
        self._unit = unit
        self.bus = unit.bus
        self._store = store
        self._conn: AsyncConn | None = None
        self._lock: asyncio.Lock | None = None
        self._lost: BaseException | None = None
        """An error of a statement's that was the database's, not the SQL's: the
        connection failed, no connection came, or another transaction held rows past
        ``lock_timeout`` (or a deadlock)."""

    @property
    def unit(self) -> Transaction:
        return self._unit

    @property
    def live(self) -> bool:
        """Whether it holds a connection (a statement ran, or the block began)."""
        return self._conn is not None

    async def connection(self) -> AsyncConn:
        """The psycopg connection inside this transaction (``BEGIN`` on first use).
        Read and write through it as you like; never commit or roll back on it."""
        if not self._unit.open:
            raise RuntimeError("the transaction is over: it is committed or rolled back")
        conn = self._conn
        if conn is not None:
            return conn
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # two first statements at once take one connection
            if self._conn is None:
                try:
                    conn = await self._store.acquire()
                except StoreError as exc:
                    self._lost = exc
                    raise
                try:
                    await conn.execute("BEGIN")
                except BaseException as exc:
                    self._lost = exc
                    await self._store.release(conn, broken=True)
                    raise
                self._conn = conn
            return self._conn

    async def execute(self, sql: str, params: Params = ()) -> AsyncCursor[TupleRow]:
        """Run ``sql`` now, in the transaction; psycopg's cursor (fetch from it)."""
        check_sql(sql, self._unit.open)
        conn = await self.connection()
        try:
            return await conn.execute(sql, params or None)
        except psycopg.Error as exc:
            self._note(conn, exc)
            raise

    async def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> None:
        check_sql(sql, self._unit.open)
        conn = await self.connection()
        try:
            async with conn.cursor() as cur:
                await cur.executemany(sql, list(seq_of_params))
        except psycopg.Error as exc:
            self._note(conn, exc)
            raise

    def _note(self, conn: AsyncConn, exc: psycopg.Error) -> None:
        if conn.broken or conn.closed or isinstance(exc, (*CONTENDED, psycopg.OperationalError)):
            self._lost = exc

    def retry_for(self, exc: BaseException) -> RetryLater | None:
        """A handler that raised what the database caused (its connection failed,
        another transaction held its rows) is retried, not rejected."""
        lost = self._lost
        if lost is None or (exc is not lost and exc.__cause__ is not lost):
            return None
        return RetryLater(1.0, f"the store's transaction failed: {lost}")

    async def rows(self, sql: str, params: Params = ()) -> BlockingResult:
        cur = await self.execute(sql, params)
        rows: list[tuple[Any, ...]] | None = None
        if cur.description is not None:
            rows = list(await cur.fetchall())
        return BlockingResult(cur.rowcount, rows)

    # -- the endpoint's side ------------------------------------------------------------

    async def begin(self) -> None:
        """Take the connection now (``ep.transaction()``)."""
        await self.connection()

    async def commit(self, record: InboxRecord | None) -> None:
        """Claim ``record`` (``None``: the user's own transaction), insert the outbox
        rows of the sends, commit, give the connection back. Sets the unit's
        ``duplicate``, ``busy`` or ``failed`` (then nothing of it committed); raises if
        the connection failed (then whether the COMMIT landed is unknown)."""
        conn = self._conn
        assert conn is not None
        self._conn = None
        unit = self._unit
        q = self._store.writer_sql
        broken = True
        try:
            try:
                if conn.info.transaction_status is TransactionStatus.INERROR:
                    # A statement failed and the code went on: COMMIT would roll back.
                    unit.failed = StoreError(
                        "a statement of the transaction failed earlier; it was rolled back"
                    )
                    await conn.execute("ROLLBACK")
                elif record is not None and not await self._claim(conn, record):
                    pass  # a duplicate: rolled back, unit.duplicate set
                else:
                    if unit.sends:
                        async with conn.cursor() as cur:
                            await cur.executemany(
                                q.insert_outbox,
                                [(*d.row, q.service, q.instance) for d in unit.sends],
                            )
                    await conn.execute("COMMIT")
            except CONTENDED as exc:  # a sibling holds the record (or the code's rows)
                unit.busy = exc
                await conn.execute("ROLLBACK")
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    raise  # the connection, not the SQL: unknown whether it committed
                unit.failed = exc
                await conn.execute("ROLLBACK")
            broken = False
        finally:
            await self._store.release(conn, broken)

    async def _claim(self, conn: AsyncConn, record: InboxRecord) -> bool:
        """Insert the inbox record; ``False`` (rolled back, ``unit.duplicate`` set) if
        the service's inbox has the id already."""
        q = self._store.writer_sql
        cur = await conn.execute(q.claim_inbox, (*record, q.service))
        if await cur.fetchone() is not None:
            return True
        await conn.execute("ROLLBACK")
        cur = await conn.execute(q.select_inbox, (q.service, record.msg_id))
        row = await cur.fetchone()
        # None: pruned since the insert saw it; answer with this run's outcome.
        self._unit.duplicate = inbox_record(row) if row is not None else record
        return False

    async def abort(self) -> None:
        """Roll back and give the connection back (the code failed, or the endpoint
        closed). Never raises: a connection that cannot roll back is closed."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        broken = True
        try:
            await conn.execute("ROLLBACK")
            broken = False
        except Exception as exc:
            log.warning(
                "%s: rollback failed, closing its connection: %s", self._store.location, exc
            )
        finally:
            await self._store.release(conn, broken)
