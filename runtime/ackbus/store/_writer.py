"""Group commit: one writer thread, one connection, one transaction per batch.

sqlite3 calls block, and a commit in ``synchronous=FULL`` mode waits for an fsync (a
millisecond or more). Made on the event loop they would stall every socket; made one
transaction per message they would cap a service at a few hundred messages a second.
So every write goes to a :class:`GroupWriter`: the event loop appends operations to the
one *open* :class:`Batch`, releases it at the end of the loop iteration that opened it
(so whatever that iteration's callbacks and tasks write joins it), and the writer thread
takes the whole open batch whenever it is free, runs it as one transaction with one
fsync, and wakes the loop once for the batch. Everything queued while the previous
transaction was committing lands in the next one, so batches grow exactly when the disk
is the bottleneck. (The writer does not take a batch as soon as it opens: concurrent
sends would then commit in many small transactions.)

An operation is either ``(sql, params)`` (consecutive ones with the same statement object
run as one ``executemany``) or a callable taking the connection (a handler's unit of
work, which manages its own savepoint). A batch of *lazy* operations only (an "acked"
mark, a dead letter move) commits with ``synchronous=NORMAL``: losing it in a power cut
only causes a harmless re-send after restart, so it does not pay for an fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

from ..errors import StoreError

__all__ = ["Batch", "GroupWriter", "Op", "each_row", "each_value", "rows_statement"]

log = logging.getLogger("ackbus.store")

Op = tuple[str, Sequence[Any]] | Callable[[sqlite3.Connection], None]
"""A statement with its parameters, or a unit of work run against the connection."""


class Batch:
    """Operations that commit in one transaction, and who waits for it.

    Lives on the event loop's thread except for :attr:`ops`, which the writer takes
    under the writer's lock. :meth:`wait` and :meth:`on_commit` are called on the loop's
    thread, before or after the commit was reported.
    """

    __slots__ = ("_callbacks", "_waiters", "_watchdog", "done", "durable", "error", "ops")

    def __init__(self) -> None:
        self._watchdog: asyncio.TimerHandle | None = None
        self.ops: list[Any] = []
        """The operations, in the store's own form (:data:`Op` for SQLite)."""
        self.durable = False
        self.done = False
        self.error: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._callbacks: list[Callable[[BaseException | None], None]] = []

    async def wait(self) -> None:
        """Until the batch is on disk; raises :class:`StoreError` if it failed."""
        if not self.done:
            await self.waiter()
        self.check()

    def waiter(self) -> asyncio.Future[None]:
        """A future of the running loop's that completes when the batch is done (then
        call :meth:`check`). Awaited directly by the send path, it saves a coroutine
        per message over :meth:`wait`.

        A future per waiter, so that a cancelled waiter cancels only its own (an
        asyncio.shield around one shared future would do the same at more cost per
        waiter, and hundreds wait on one batch)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.done:
            fut.set_result(None)
        else:
            self._waiters.append(fut)
        return fut

    def check(self) -> None:
        """Raise :class:`StoreError` if the batch failed to commit."""
        if self.error is not None:
            raise StoreError(f"the durable store failed to commit: {self.error}") from self.error

    def on_commit(self, fn: Callable[[BaseException | None], None]) -> None:
        """Call ``fn(None)`` once committed, ``fn(error)`` if the transaction failed."""
        if self.done:
            fn(self.error)
        else:
            self._callbacks.append(fn)

    def _finish(self, error: BaseException | None) -> None:
        if self.done:  # the watchdog gave up on it earlier; its waiters were told then
            return
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.done = True
        self.error = error
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        for fn in self._callbacks:
            try:
                fn(error)
            except Exception:  # one broken callback must not starve the rest
                log.exception("commit callback failed")


class GroupWriter:
    """The writer thread. ``full`` says the connection runs ``synchronous=FULL`` (lazy
    batches then relax to NORMAL for their own commit)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        full: bool,
        name: str = "ackbus-store",
        commit_timeout: float = 30.0,
    ) -> None:
        self._conn = conn
        self._commit_timeout = commit_timeout
        self._dead = False
        self._full = full
        self._name = name
        # A plain lock (C-level ``with``) rather than Condition's default RLock, whose
        # __enter__/__exit__ run in Python on every add() (two per message on a
        # durable sender).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._open: Batch | None = None
        self._stopping = False
        self._released = False
        self._idle = False
        """The writer thread waits for a batch (only then does a release notify it)."""
        """The open batch may be taken (set at the end of the loop iteration that opened it)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.commits = 0
        """Transactions committed (each one fsync in FULL mode): for tests and benches."""
        self.ops = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def add(self, op: Op, *, durable: bool = True) -> Batch:
        """Append ``op`` to the open batch (opening one if the writer took the last)."""
        with self._lock:
            batch = self._open
            if batch is None:
                if self._stopping or self._dead:
                    raise StoreError(
                        "the durable store is closed"
                        if self._stopping
                        else "the durable store's writer thread died (see the log)"
                    )
                batch = self._open = Batch()
                # Hand the batch over at the end of this loop iteration, not now: what
                # the iteration's other callbacks and tasks add joins it (fewer, fuller
                # transactions, and less GIL ping-pong with the writer).
                loop = self._loop
                assert loop is not None, "start() the writer first"
                loop.call_soon(self._release)
                # Nothing waits forever: a disk that does not answer fails the batch.
                batch._watchdog = loop.call_later(self._commit_timeout, self._expire, batch)
            batch.ops.append(op)
            if durable:
                batch.durable = True
        return batch

    def _expire(self, batch: Batch) -> None:
        batch._finish(
            StoreError(
                f"{self._name}: no commit within {self._commit_timeout:.0f} s; the disk is "
                "not answering (the batch may still commit later)"
            )
        )

    def _release(self) -> None:
        with self._lock:
            self._released = True
            if self._idle:  # a busy writer looks again after its commit: no notify
                self._cond.notify()

    async def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the thread and close the connection."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout)
            if thread.is_alive():  # pragma: no cover - a disk hanging for `timeout`
                log.error("%s: writer thread still busy after %.0f s", self._name, timeout)
                return
        else:
            self._conn.close()

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        conn = self._conn
        try:
            while True:
                with self._cond:
                    while not ((self._released and self._open) or self._stopping):
                        self._idle = True
                        self._cond.wait()
                        self._idle = False
                    batch, self._open = self._open, None
                    self._released = False
                if batch is None:
                    return
                self._commit(conn, batch)
        except BaseException:  # pragma: no cover - _commit catches what sqlite raises
            log.exception("%s: writer thread died", self._name)
            raise
        finally:
            with self._cond:
                self._dead = True
                orphan, self._open = self._open, None
            if orphan is not None and self._loop is not None:
                gone = StoreError("the durable store's writer thread stopped")
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(orphan._finish, gone)
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: Batch) -> None:
        error: BaseException | None = None
        relax = self._full and not batch.durable
        try:
            if relax:
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            _apply(conn, batch.ops)
            conn.execute("COMMIT")
            self.commits += 1
            self.ops += len(batch.ops)
        except Exception as exc:
            error = exc
            log.error(
                "%s: transaction of %d operations failed: %s", self._name, len(batch.ops), exc
            )
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        finally:
            if relax:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA synchronous=FULL")
        loop = self._loop
        if loop is None:  # pragma: no cover - start() sets it before the thread runs
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(batch._finish, error)


_ROWS: dict[str, tuple[str, str, str, int]] = {}
"""Statements registered with :func:`rows_statement`: single-row text -> (head, one
row's placeholders, tail, parameters per row)."""

_TEXTS: dict[tuple[str, int], str] = {}


def rows_statement(head: str, row: str, tail: str = "") -> str:
    """A statement that takes one row, ``head + row + tail`` (``INSERT ... VALUES
    (?, ?)``, ``DELETE ... WHERE id IN (?)``), which :func:`_apply` may also run as
    ``head + row, row, ... + tail`` for many rows at once.

    sqlite3's ``executemany`` binds and steps the statement once per row, releasing
    and retaking the GIL around every step: on a busy event loop each step waits for
    the loop's thread to let go. One statement for 64-256 rows binds them in one C
    call and steps once."""
    sql = head + row + tail
    _ROWS[sql] = (head, row, tail, row.count("?"))
    return sql


def each_value(sql: str, values: list[Any]) -> Op:
    """One operation that runs ``sql``, a statement registered with
    :func:`rows_statement` that takes one parameter, for each of ``values`` in order
    (``DELETE ... WHERE id IN (?)`` for an ack group's ids): one object where an
    operation per value would make two per value, each for the garbage collector to
    walk."""
    if _ROWS[sql][3] != 1:
        raise ValueError(f"each_value needs a one-parameter statement, not {sql!r}")
    return functools.partial(_each_value, sql, values)


def _each_value(sql: str, values: list[Any], conn: sqlite3.Connection) -> None:
    _many(conn, sql, values, flat=True)


def each_row(sql: str, rows: Sequence[Sequence[Any]]) -> Op:
    """One operation that runs ``sql``, a statement registered with
    :func:`rows_statement`, for each of ``rows`` (parameter sets) in order: a group's
    outbox rows, as multi-row statements, in one operation of one batch."""
    if sql not in _ROWS:
        raise ValueError(f"each_row needs a statement registered with rows_statement: {sql!r}")
    return functools.partial(_many, sql=sql, params=rows)


def _many(conn: sqlite3.Connection, sql: str, params: Sequence[Any], *, flat: bool = False) -> None:
    """Run a registered single-row statement for every parameter set, in order, in
    statements of up to a power-of-two number of rows (few distinct texts, all cached
    by sqlite3's statement cache). ``flat``: ``params`` holds the values themselves,
    for a one-parameter statement."""
    head, row, tail, width = _ROWS[sql]
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    top = 1
    while top * 2 <= min(limit, 256):
        top *= 2
    i, n = 0, len(params)
    while i < n:
        size = top
        while size > n - i:
            size //= 2
        text = _TEXTS.get((sql, size))
        if text is None:
            text = _TEXTS[(sql, size)] = head + ", ".join([row] * size) + tail
        part = params[i : i + size]
        conn.execute(text, part if flat else list(chain.from_iterable(part)))
        i += size


def _apply(conn: sqlite3.Connection, ops: list[Op]) -> None:
    """Run ``ops`` in order; consecutive statements that are the same object run
    together: as multi-row statements if registered with :func:`rows_statement`, else
    as one ``executemany`` (the statements are module constants, so identity is enough)."""
    i = 0
    n = len(ops)
    while i < n:
        op = ops[i]
        if not isinstance(op, tuple):
            op(conn)
            i += 1
            continue
        sql = op[0]
        j = i + 1
        while j < n:
            nxt = ops[j]
            if not isinstance(nxt, tuple) or nxt[0] is not sql:
                break
            j += 1
        if j == i + 1:
            conn.execute(sql, op[1])
        elif sql in _ROWS:
            _many(conn, sql, [o[1] for o in ops[i:j]])  # type: ignore[index]
        else:
            conn.executemany(sql, [o[1] for o in ops[i:j]])  # type: ignore[index]
        i = j
