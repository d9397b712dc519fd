"""The PostgreSQL store: one database shared by every instance of a service.

``Endpoint(..., store="postgresql://user@host/db")``. Outbox, inbox, dead letters and
instance identities live in one schema (``ackbus``, or ``?schema=NAME``), which several
services may share: the inbox is keyed by (service, message id), so it is one inbox per
*service*, whichever instance handled a message, and a retry that reaches a sibling
instance finds the message there (docs/durable.md, "PostgreSQL").

Opening is synchronous, as the SQLite store's is: the constructor of the endpoint
connects, creates or checks the schema, and claims the instance. A claim is a session
advisory lock held by one connection for the store's life: PostgreSQL releases it when
that connection ends, also when the process is killed with ``-9`` (the server sees the
socket close), so a restarted instance with the same ``instance=`` gets it at once and a
second live process with that identity is refused. Without ``instance=`` each start is a
fresh instance. While claiming, an instance takes over the pending outbox rows of its
service's instances whose lock is free (their process is gone): they are sent by the new
owner. Writes go through :class:`~ackbus.store._pg_writer.PgWriter` (async, pooled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import LiteralString

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from ..errors import StoreError
from ._base import DeadLetter, Durability, InboxRecord, OutboxRow, Store, matching
from ._pg_schema import LOCK_CLASS, PgUrl, create_or_check, parse_url, statement
from ._pg_tx import PgTransaction
from ._pg_writer import AsyncConn, PgOp, PgStatements, PgWriter, inbox_record
from ._unit import Transaction
from ._writer import Batch

__all__ = ["PostgresStore"]

log = logging.getLogger("ackbus.store")

Conn = psycopg.Connection[TupleRow]

_SESSION: tuple[LiteralString, ...] = (
    "SET lock_timeout = '10s'",
    "SET statement_timeout = '30s'",
    "SET idle_in_transaction_session_timeout = '10s'",
)
"""Every writer connection's settings. A commit waits at most 10 s for a row another
transaction holds (a sibling's uncommitted record of the same message id): then its
message is not acked and is retried. No statement runs longer than 30 s, the batch's
own deadline (a server that stops answering fails the batch, not the writer). A writer's
transaction never waits for anything but the server between its statements, so one
that stays idle for 10 s belongs to a process that stopped (SIGSTOP, a frozen VM): the
server ends that session and rolls it back, which releases the inbox records a sibling
waits for; the frozen process's commit then fails, so it acks nothing."""


POOL_SIZE = 4
"""Connections of a store's pool unless ``pool_size=`` (or ``?pool_size=``) says: the
group commit's and ``POOL_SIZE - 1`` live transactions (``max_transactions``), which
is also the endpoint's default ``max_concurrency`` with this store."""


class PostgresStore(Store):
    """A durable store in a PostgreSQL database, shared by a service's instances."""

    def __init__(
        self, url: str | PgUrl, *, pool_size: int | None = None, takeover_every: float = 5.0
    ) -> None:
        self.url = url if isinstance(url, PgUrl) else parse_url(url)
        if pool_size is None:
            pool_size = self.url.pool_size or POOL_SIZE
        if pool_size < 2:
            raise ValueError(
                f"pool_size must be at least 2 (the writer's connection and one for "
                f"transactions), got {pool_size}"
            )
        self.location = self.url.location
        self.durability = self.url.durability
        self.dead_letters_ttl = self.url.dead_letters_ttl
        self.schema = self.url.schema
        self.pool_size = pool_size
        self.service = ""
        self.instance = ""
        self._conn: Conn | None = None
        """The claim's connection: holds the instance's advisory lock while it is open."""
        self._writer: PgWriter | None = None
        self._sql: PgStatements | None = None
        self._closed = False
        if not takeover_every > 0:
            raise ValueError(f"takeover_every must be > 0 seconds, got {takeover_every}")
        self.takeover_every: float | None = takeover_every
        """Seconds between a running instance's looks for gone siblings' outbox rows."""
        self.max_transactions = pool_size - 1
        """Live transactions (``ctx.tx`` used, ``ep.transaction()``) holding a pooled
        connection at once; the pool keeps one more for the group commit."""
        self._slots: asyncio.Semaphore | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        return cls(url)

    def _s(self, text: LiteralString) -> psycopg.sql.Composed:
        return statement(text, self.schema)

    # -- opening ------------------------------------------------------------------------

    def _connect(self) -> Conn:
        """A connection in autocommit mode, the schema created or checked."""
        try:
            conn = psycopg.connect(self.url.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(
                f"{self.location}: cannot connect to PostgreSQL: {_first_line(exc)}"
            ) from exc
        try:
            create_or_check(conn, self.url)
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(
                f"{self.location}: cannot create or read the ackbus schema "
                f"{self.schema!r}: {_first_line(exc)}"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def claim(self, service: str, instance: str | None) -> str:
        if self._conn is not None:
            raise StoreError(f"{self.location} is already claimed by this store object")
        conn = self._connect()
        with self._or_close(conn, "cannot claim an instance"):
            chosen = instance or uuid.uuid4().hex
            if not self._try_lock(conn, service, chosen):
                row = conn.execute(
                    self._s(
                        "SELECT pid, host FROM {s}.instances WHERE service = %s AND instance = %s"
                    ),
                    (service, chosen),
                ).fetchone()
                owner = f" (pid {row[0]} on {row[1]})" if row else ""
                raise StoreError(
                    f"{self.location}: instance {chosen!r} of service {service!r} is in use by "
                    f"another live process{owner}: give each live instance its own instance "
                    "id, or none (a fresh one per start)"
                )
            self._record_instance(conn, service, chosen)
            self._take_over(conn, service, chosen)
        self._conn = conn
        self.service, self.instance = service, chosen
        self._sql = PgStatements(self.schema, service, chosen)
        return chosen

    @contextlib.contextmanager
    def _or_close(self, conn: Conn, what: str) -> Iterator[None]:
        """Close ``conn`` if the block fails; a database error as a :class:`StoreError`
        saying ``what`` failed."""
        try:
            yield
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"{self.location}: {what}: {exc}") from exc
        except BaseException:
            conn.close()
            raise

    def _record_instance(self, conn: Conn, service: str, instance: str) -> None:
        """This process as the instance's holder (what a refused claim names)."""
        conn.execute(
            self._s(
                "INSERT INTO {s}.instances VALUES (%s, %s, %s, %s, %s) ON CONFLICT"
                " (service, instance) DO UPDATE SET pid = EXCLUDED.pid,"
                " host = EXCLUDED.host, started_at = EXCLUDED.started_at"
            ),
            (service, instance, os.getpid(), socket.gethostname(), time.time()),
        )

    def _try_lock(self, conn: Conn, service: str, instance: str) -> bool:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))",
            (LOCK_CLASS, f"{self.schema}/{service}/{instance}"),
        ).fetchone()
        return bool(row and row[0])

    def keep_claim(self) -> bool:
        """See that the claim's connection (and with it the instance's advisory lock) is
        alive; if it was lost (the database restarted, or the connection was cut),
        connect again and take the lock again (on a worker thread, every second).
        ``True`` if the claim was taken again. Raises :class:`StoreError` while the
        server cannot be reached, or if another process claimed this instance meanwhile
        (the next call tries again)."""
        conn = self._claimed()
        try:
            conn.execute("SELECT 1")
            return False
        except psycopg.Error as exc:
            if not (conn.broken or conn.closed):
                raise StoreError(f"{self.location}: checking the claim failed: {exc}") from exc
        with contextlib.suppress(Exception):
            conn.close()
        fresh = self._connect()
        service, me = self.service, self.instance
        with self._or_close(fresh, "cannot claim the instance again"):
            if not self._try_lock(fresh, service, me):
                raise StoreError(
                    f"{self.location}: instance {me!r} of service {service!r} was claimed by "
                    "another process while this one's connection was lost; this process "
                    "runs on without the claim until that one ends"
                )
            self._record_instance(fresh, service, me)
        if self._closed:  # aclose() ran meanwhile: hold nothing past it
            fresh.close()
            return False
        self._conn = fresh
        log.warning(
            "%s: instance %s of %s claimed again after its connection was lost",
            self.location, me, service,
        )  # fmt: skip
        return True

    def take_over(self) -> list[OutboxRow]:
        """Adopt the pending outbox rows of this service's instances whose process is
        gone (their advisory lock is free), and return them, oldest first: a running
        instance's periodic look (on a worker thread; the claim's connection)."""
        return self._take_over(self._claimed(), self.service, self.instance)

    def _take_over(self, conn: Conn, service: str, me: str) -> list[OutboxRow]:
        """Adopt the outbox rows of this service's instances whose process is gone (their
        advisory lock is free), forget those instances, and return the rows."""
        adopted: list[OutboxRow] = []
        others = conn.execute(
            self._s("SELECT instance FROM {s}.instances WHERE service = %s AND instance <> %s"),
            (service, me),
        ).fetchall()
        for (other,) in others:
            if not self._try_lock(conn, service, other):
                continue  # alive
            try:
                with conn.transaction():
                    rows = conn.execute(
                        self._s(
                            "UPDATE {s}.outbox SET instance = %s"
                            " WHERE service = %s AND instance = %s RETURNING id, type,"
                            " destination, kind, request, policy, created_at, deadline, frame,"
                            " seq"
                        ),
                        (me, service, other),
                    ).fetchall()
                    conn.execute(
                        self._s("DELETE FROM {s}.instances WHERE service = %s AND instance = %s"),
                        (service, other),
                    )
            finally:
                conn.execute(
                    "SELECT pg_advisory_unlock(%s, hashtext(%s))",
                    (LOCK_CLASS, f"{self.schema}/{service}/{other}"),
                )
            if rows:
                log.info(
                    "%s: instance %s of %s took over %d pending messages of instance %s, "
                    "whose process is gone",
                    self.location, me, service, len(rows), other,
                )  # fmt: skip
                rows.sort(key=lambda r: r[9])  # seq: the order they were sent in
                adopted.extend(OutboxRow(*r[:9]) for r in rows)
        return adopted

    # -- reading back (at start, before the writer runs; on a worker thread) ------------

    def _claimed(self) -> Conn:
        if self._conn is None:
            raise StoreError(f"{self.location}: claim() the store first")
        return self._conn

    def pending_outbox(self) -> list[OutboxRow]:
        rows = self._claimed().execute(
            self._s(
                "SELECT id, type, destination, kind, request, policy, created_at, deadline,"
                " frame FROM {s}.outbox WHERE service = %s AND instance = %s ORDER BY seq"
            ),
            (self.service, self.instance),
        )
        return [OutboxRow(*r) for r in rows]

    def inbox_since(self, since: float, limit: int = -1) -> list[InboxRecord]:
        rows = (
            self._claimed()
            .execute(
                self._s(
                    "SELECT id, outcome, finished_at, response, error_type, error_message,"
                    " error_permanent FROM {s}.inbox WHERE service = %s AND finished_at >= %s"
                    " ORDER BY finished_at DESC LIMIT %s"
                ),
                (self.service, since, limit if limit >= 0 else None),
            )
            .fetchall()
        )
        return [inbox_record(r) for r in reversed(rows)]

    # -- writing ------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._claimed()
        if self._writer is not None:
            return
        relaxed = self.durability is Durability.RELAXED

        async def configure(conn: AsyncConn) -> None:
            for setting in _SESSION:
                await conn.execute(setting)
            if relaxed:
                await conn.execute("SET synchronous_commit = off")

        pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
            self.url.conninfo,
            min_size=1,
            max_size=self.pool_size,
            kwargs=self._session_kwargs(),
            configure=configure,
            name=f"ackbus:{self.service}",
            open=False,
        )
        assert self._sql is not None
        self._writer = PgWriter(
            pool, self._sql, name=f"ackbus-store:{self.location}", relaxed=relaxed
        )
        self._writer.start(loop)
        self._slots = asyncio.Semaphore(self.pool_size - 1)

    # -- live transactions --------------------------------------------------------------

    def transaction(self, unit: Transaction) -> PgTransaction:
        """A live transaction for ``unit`` (``ctx.tx``, ``ep.transaction()``)."""
        return PgTransaction(unit, self)

    async def acquire(self, timeout: float = 30.0) -> AsyncConn:
        """A connection for a live transaction, once one of :attr:`max_transactions`
        is free (``StoreError`` after ``timeout`` seconds)."""
        slots, writer = self._slots, self.writer
        assert slots is not None
        try:
            await asyncio.wait_for(slots.acquire(), timeout)
        except TimeoutError:
            raise StoreError(
                f"{self.location}: no connection for a transaction within {timeout:.0f} s "
                f"({self.max_transactions} in use; PostgresStore(pool_size=) sets how many)"
            ) from None
        try:
            return await writer.pool.getconn(timeout=timeout)
        except BaseException as exc:
            slots.release()
            if isinstance(exc, psycopg.Error | psycopg_pool.PoolTimeout):
                raise StoreError(f"{self.location}: no connection: {exc}") from exc
            raise

    async def release(self, conn: AsyncConn, broken: bool) -> None:
        """Give a live transaction's connection back (closed first if ``broken``)."""
        try:
            if broken and not conn.closed:
                await conn.close()
            await self.writer.pool.putconn(conn)
        finally:
            assert self._slots is not None
            self._slots.release()

    def _session_kwargs(self) -> dict[str, object]:
        """autocommit (the writer opens its transactions), and an ``application_name``
        naming the instance (``ackbus:SERVICE:INSTANCE``, seen in pg_stat_activity)
        unless the URL gives one."""
        kwargs: dict[str, object] = {"autocommit": True}
        if "application_name" not in conninfo_to_dict(self.url.conninfo):
            kwargs["application_name"] = f"ackbus:{self.service}:{self.instance}"[:63]
        return kwargs

    @property
    def writer(self) -> PgWriter:
        if self._writer is None:
            raise StoreError(f"{self.location}: the store is not started")
        return self._writer

    def write(self, op: PgOp, *, durable: bool = True) -> Batch:
        """Queue ``op`` (a statement of :class:`PgStatements` with its parameters, or a
        unit) for the next group commit."""
        return self.writer.add(op, durable=durable)

    def put_unit(self, unit: Transaction) -> Batch:
        return self.writer.add(unit)

    def put_outbox(self, row: OutboxRow) -> Batch:
        q = self.writer_sql
        return self.writer.add((q.insert_outbox, (*row, q.service, q.instance)))

    def put_inbox(self, record: InboxRecord) -> Batch:
        q = self.writer_sql
        return self.writer.add((q.insert_inbox, (*record, q.service)))

    def forget_outbox(self, msg_id: bytes) -> None:
        self.forget_outboxes((msg_id,))

    def forget_outboxes(self, msg_ids: Iterable[bytes]) -> None:
        self.writer.add((self.writer_sql.delete_outbox, (list(msg_ids),)), durable=False)

    def dead_letter(self, msg_id: bytes, reason: str, attempts: int, error: str) -> None:
        q, w = self.writer_sql, self.writer
        w.add((q.move_to_dead, (reason, attempts, error, time.time(), msg_id)), durable=False)
        w.add((q.delete_outbox, ([msg_id],)), durable=False)

    def prune_inbox(self, before: float) -> None:
        q = self.writer_sql
        self.writer.add((q.prune_inbox, (q.service, before)), durable=False)

    def prune_dead_letters(self, before: float) -> None:
        """This service's dead letters only (the schema may hold other services')."""
        q = self.writer_sql
        self.writer.add((q.prune_dead, (q.service, before)), durable=False)

    @property
    def writer_sql(self) -> PgStatements:
        if self._sql is None:
            raise StoreError(f"{self.location}: claim() the store first")
        return self._sql

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer.stop()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)  # ends the session: the claim's lock goes

    # -- administration (ackbus dead-letters, tests; beside live owners) --------------

    def _admin(self) -> Conn:
        return self._connect()

    def execute_script(self, script: str) -> None:
        """Run ``script`` (e.g. ``CREATE TABLE IF NOT EXISTS ...`` for a handler's own
        tables) now, in autocommit mode, on a connection of its own."""
        with self._admin() as conn:
            conn.execute(script)

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter of every service in the schema, oldest failure first."""
        with self._admin() as conn:
            rows = conn.execute(
                self._s(
                    "SELECT id, type, destination, kind, reason, attempts, error, created_at,"
                    " failed_at, frame FROM {s}.dead_letters ORDER BY failed_at"
                )
            ).fetchall()
        return [DeadLetter(*r) for r in rows]

    def find_dead_letters(self, prefix: str) -> list[DeadLetter]:
        """Dead letters whose hex id starts with ``prefix``."""
        return matching(self.dead_letters(), prefix)

    def remove_dead_letters(self, ids: list[bytes]) -> int:
        """Delete dead letters by id; returns how many existed."""
        with self._admin() as conn:
            cur = conn.execute(
                self._s("DELETE FROM {s}.dead_letters WHERE id = ANY(%s)"), (list(ids),)
            )
            return cur.rowcount

    def counts(self) -> dict[str, int]:
        """Rows per ackbus table, all services (for tests, benches and operators)."""
        with self._admin() as conn:
            result: dict[str, int] = {}
            for name in ("outbox", "inbox", "dead_letters"):
                row = conn.execute(
                    psycopg.sql.SQL("SELECT count(*) FROM {}.{}").format(
                        psycopg.sql.Identifier(self.schema), psycopg.sql.Identifier(name)
                    )
                ).fetchone()
                result[name] = int(row[0]) if row else 0
            return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
