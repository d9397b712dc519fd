"""The SQLite store: one database file per service instance, WAL mode, group commit.

Opening checks before it writes anything: a file that is not SQLite (SQLite itself
refuses it; ackbus never opens the file otherwise, since closing a second descriptor
would drop SQLite's POSIX locks), an SQLite file of
another application (``PRAGMA application_id``), or one made by a newer ackbus
(``PRAGMA user_version``) is refused with a :class:`~ackbus.StoreError` naming the
file; nothing is overwritten. Ownership is an exclusive ``flock`` on the database file,
held while the endpoint lives and released by the kernel when the process dies (even by
``kill -9``), so a restarted process gets it back at once and a second live process is
refused. Tables are prefixed ``ackbus_`` so a handler's own tables can live beside them
(docs/durable.md).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from ..core import Outcome
from ..errors import StoreError
from ..wire import ID_SIZE, id_of_order_key, order_key
from ._base import DeadLetter, Durability, InboxRecord, OutboxRow, Store, matching, parse_seconds
from ._rows import dead_letter, inbox_record, outbox_row
from ._writer import Batch, GroupWriter, Op, each_row, each_value, rows_statement

if TYPE_CHECKING:
    from ._unit import Transaction

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SqliteStore"]

APPLICATION_ID = 0x41434B42
"""``PRAGMA application_id`` of an ackbus database ("ACKB")."""
SCHEMA_VERSION = 2
"""``PRAGMA user_version``: the layout of the ``ackbus_*`` tables. 2: ``ackbus_inbox.id``
holds ``wire.order_key`` of the message id, so one sender's records are inserted side by
side in the index (1 held the id itself; a store of schema 1 is converted on opening)."""

_SCHEMA = """
CREATE TABLE ackbus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE ackbus_outbox (
    id BLOB PRIMARY KEY, type TEXT NOT NULL, destination TEXT NOT NULL,
    kind INTEGER NOT NULL, request INTEGER NOT NULL, policy TEXT NOT NULL,
    created_at REAL NOT NULL, deadline REAL NOT NULL, frame BLOB NOT NULL);
CREATE TABLE ackbus_inbox (
    id BLOB PRIMARY KEY, outcome INTEGER NOT NULL, finished_at REAL NOT NULL,
    response BLOB NOT NULL, error_type TEXT NOT NULL, error_message TEXT NOT NULL,
    error_permanent INTEGER NOT NULL);
CREATE INDEX ackbus_inbox_finished ON ackbus_inbox (finished_at);
CREATE TABLE ackbus_dead_letters (
    id BLOB PRIMARY KEY, type TEXT NOT NULL, destination TEXT NOT NULL,
    kind INTEGER NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL,
    error TEXT NOT NULL, created_at REAL NOT NULL, failed_at REAL NOT NULL,
    frame BLOB NOT NULL);
"""

INSERT_OUTBOX = rows_statement(
    "INSERT OR IGNORE INTO ackbus_outbox VALUES ", "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_INBOX = rows_statement("INSERT OR IGNORE INTO ackbus_inbox VALUES ", "(?, ?, ?, ?, ?, ?, ?)")
_INSERT_INBOX_OK = rows_statement(
    "INSERT OR IGNORE INTO ackbus_inbox VALUES ", f"(?, {int(Outcome.OK)}, ?, x'', '', '', 0)"
)
"""The common record (OK, no response, no error) with only its two varying values as
parameters: two bindings per row instead of seven."""
INSERT_INBOX_STRICT = "INSERT INTO ackbus_inbox VALUES (?, ?, ?, ?, ?, ?, ?)"
SELECT_INBOX = "SELECT rowid, * FROM ackbus_inbox WHERE id = ?"
_DELETE_OUTBOX = rows_statement("DELETE FROM ackbus_outbox WHERE id IN (", "?", ")")
_MOVE_TO_DEAD = (
    "INSERT OR REPLACE INTO ackbus_dead_letters "
    "SELECT id, type, destination, kind, ?, ?, ?, created_at, ?, frame "
    "FROM ackbus_outbox WHERE id = ?"
)
_PRUNE_INBOX = "DELETE FROM ackbus_inbox WHERE finished_at < ?"
_PRUNE_DEAD = "DELETE FROM ackbus_dead_letters WHERE failed_at < ?"
_DEAD_COLUMNS = "id, type, destination, kind, reason, attempts, error, created_at, failed_at, frame"


class SqliteStore(Store):
    """A durable store in one SQLite file. Not shared between live processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: Durability = Durability.FULL,
        *,
        dead_letters_ttl: float | None = None,
    ):
        self.path = Path(path)
        self.dead_letters_ttl = dead_letters_ttl
        self.location = str(self.path)
        self.durability = durability
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._writer: GroupWriter | None = None
        self._add: Callable[..., Batch] = self._not_started
        """The writer's ``add`` once started (bound once: the put methods run per message)."""
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
            raise ValueError(
                f"store URL must look like sqlite:///relative/path.db or "
                f"sqlite:////absolute/path.db, got {url!r}"
            )
        path = parts.path[1:]
        if not path:
            raise ValueError(f"store URL {url!r} names no file")
        query = parse_qs(parts.query, strict_parsing=False)
        unknown = set(query) - {"durability", "dead_letters_ttl"}
        if unknown:
            raise ValueError(f"unknown store URL option(s) {sorted(unknown)} in {url!r}")
        names = query.get("durability", ["full"])
        try:
            durability = Durability(names[-1])
        except ValueError:
            raise ValueError(
                f"durability must be 'full' or 'relaxed', got {names[-1]!r} in {url!r}"
            ) from None
        ttl = parse_seconds("dead_letters_ttl", query.get("dead_letters_ttl"), url)
        return cls(path, durability, dead_letters_ttl=ttl)

    # -- opening ------------------------------------------------------------------------

    def _connect(self, *, create: bool) -> sqlite3.Connection:
        """Open and check the file; create the schema if it is new and ``create``."""
        path = self.path
        if not path.exists() and not create:
            raise StoreError(f"{path}: no such ackbus store")
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open: {exc}") from None
        try:
            self._check(conn, create=create)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{path} is corrupt or not a database: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self, conn: sqlite3.Connection, *, create: bool) -> None:
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app == 0 and version == 0 and tables == 0:
            if not create:
                raise StoreError(f"{self.path} is an empty database, not an ackbus store")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        elif app != APPLICATION_ID:
            raise StoreError(
                f"{self.path} is an SQLite database of another application "
                f"(application_id {app:#x}, {tables} schema objects); ackbus will not "
                "write to it"
            )
        elif version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has ackbus store schema {version}, made by a newer ackbus; "
                f"this one reads schema {SCHEMA_VERSION}: upgrade ackbus"
            )
        elif version < 1:
            raise StoreError(f"{self.path}: ackbus store with no schema version (damaged)")
        elif version == 1:  # inbox ids as they came: key them by their order key
            conn.create_function("ackbus_order_key", 1, _order_key_sql, deterministic=True)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE ackbus_inbox SET id = ackbus_order_key(id)")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":  # pragma: no cover - e.g. a file system without shared memory
            raise StoreError(f"{self.path}: cannot use WAL mode (got {mode!r})")
        sync = "FULL" if self.durability is Durability.FULL else "NORMAL"
        conn.execute(f"PRAGMA synchronous={sync}")
        # Bounded disk: the WAL is truncated back to this size after a checkpoint.
        conn.execute("PRAGMA journal_size_limit=16777216")
        conn.execute("PRAGMA busy_timeout=5000")

    def claim(self, service: str, instance: str | None) -> str:
        if self._conn is not None:
            raise StoreError(f"{self.path} is already claimed by this store object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            conn = self._connect(create=True)
        except BaseException:
            self._unlock()
            raise
        try:
            _integrity(conn, self.path)
            chosen = self._meta(conn, service, instance)
            conn.executemany(
                "INSERT OR REPLACE INTO ackbus_meta VALUES (?, ?)",
                [("service", service), ("instance", chosen), ("pid", str(os.getpid()))],
            )
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._unlock()
            raise StoreError(f"{self.path} is corrupt: {exc}") from None
        except BaseException:
            conn.close()
            self._unlock()
            raise
        self._conn = conn
        return chosen

    def _meta(self, conn: sqlite3.Connection, service: str, instance: str | None) -> str:
        """The instance id to use, from the owner the store names (checked: the values
        are read back from disk)."""
        meta: dict[object, object] = dict(conn.execute("SELECT key, value FROM ackbus_meta"))
        owner = meta.get("service")
        kept = meta.get("instance")
        for key, value in (("service", owner), ("instance", kept)):
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 255):
                raise StoreError(
                    f"{self.path}: ackbus_meta {key} {value!r:.60} is not a name: the store is "
                    "damaged; move it aside"
                )
        if owner is not None and owner != service:
            raise StoreError(
                f"{self.path} belongs to service {owner!r}, not {service!r}: "
                "each service instance needs its own store file"
            )
        if kept is not None and instance is not None and kept != instance:
            raise StoreError(
                f"{self.path} belongs to instance {kept!r} of {service}, not {instance!r}: "
                "drop the instance argument to keep the stored identity"
            )
        assert kept is None or isinstance(kept, str)
        return kept or instance or uuid.uuid4().hex

    def _lock(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _owner_pid(self.path)
            raise StoreError(
                f"{self.path} is in use by another live process{f' (pid {pid})' if pid else ''}"
                ": two processes must not share one store; give each instance its own file"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- reading back (at start, before the writer runs) ------------------------------

    def _claimed(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: claim() the store first")
        return self._conn

    def pending_outbox(self) -> list[OutboxRow]:
        """Raises :class:`~ackbus.StoreError` naming the first row that is not one
        ackbus wrote (docs/durable.md, "A damaged store")."""
        rows = self._claimed().execute(
            "SELECT rowid, id, type, destination, kind, request, policy, created_at, deadline, "
            "frame FROM ackbus_outbox ORDER BY rowid"
        )
        return [outbox_row(r[1:], f"{self.path}: ackbus_outbox rowid {r[0]}") for r in rows]

    def inbox_since(self, since: float, limit: int = -1) -> list[InboxRecord]:
        """Raises :class:`~ackbus.StoreError` as :meth:`pending_outbox` does."""
        rows = self._claimed().execute(
            "SELECT * FROM (SELECT rowid, * FROM ackbus_inbox WHERE finished_at >= ? "
            "ORDER BY finished_at DESC LIMIT ?) ORDER BY finished_at",
            (since, limit),
        )
        return [read_inbox(r, f"{self.path}: ") for r in rows]

    # -- writing (through the group-commit writer) --------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        conn = self._claimed()
        if self._writer is None:
            self._writer = GroupWriter(
                conn, full=self.durability is Durability.FULL, name=f"ackbus-store:{self.path}"
            )
            self._writer.start(loop)
            self._add = self._writer.add

    @property
    def writer(self) -> GroupWriter:
        if self._writer is None:
            raise StoreError(f"{self.path}: the store is not started")
        return self._writer

    def _not_started(self, op: Op, *, durable: bool = True) -> Batch:
        raise StoreError(f"{self.path}: the store is not started")

    def write(self, op: Op, *, durable: bool = True) -> Batch:
        """Queue ``op`` for the next group commit; ``durable=False`` for lazy marks."""
        return self.writer.add(op, durable=durable)

    def put_unit(self, unit: Transaction) -> Batch:
        return self.writer.add(unit)

    def put_outbox(self, row: OutboxRow) -> Batch:
        return self._add((INSERT_OUTBOX, row))

    def put_outboxes(self, rows: list[OutboxRow]) -> Batch:
        """All ``rows`` in one operation (multi-row inserts), so the writer thread
        cannot take the batch half-way through them."""
        return self._add(each_row(INSERT_OUTBOX, rows))

    def put_inbox(self, record: InboxRecord) -> Batch:
        if record.outcome == Outcome.OK and not (
            record.response or record.error_type or record.error_message or record.error_permanent
        ):
            return self._add((_INSERT_INBOX_OK, (order_key(record.msg_id), record.finished_at)))
        return self._add((INSERT_INBOX, stored_inbox(record)))

    def forget_outbox(self, msg_id: bytes) -> None:
        self._add((_DELETE_OUTBOX, (msg_id,)), durable=False)

    def forget_outboxes(self, msg_ids: Iterable[bytes]) -> None:
        self.writer.add(each_value(_DELETE_OUTBOX, list(msg_ids)), durable=False)

    def dead_letter(self, msg_id: bytes, reason: str, attempts: int, error: str) -> None:
        w = self.writer
        w.add((_MOVE_TO_DEAD, (reason, attempts, error, time.time(), msg_id)), durable=False)
        w.add((_DELETE_OUTBOX, (msg_id,)), durable=False)

    def prune_inbox(self, before: float) -> None:
        self.writer.add((_PRUNE_INBOX, (before,)), durable=False)

    def prune_dead_letters(self, before: float) -> None:
        self.writer.add((_PRUNE_DEAD, (before,)), durable=False)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer.stop()
        elif self._conn is not None:
            self._conn.close()
        self._conn = None
        self._unlock()

    # -- administration (ackbus dead-letters; works beside a live owner) --------------

    def execute_script(self, script: str) -> None:
        """Run ``script`` (e.g. ``CREATE TABLE IF NOT EXISTS ...`` for a handler's own
        tables) on a connection of its own, now. Call it before the endpoint starts."""
        conn = self._connect(create=True)
        try:
            conn.executescript(script)
        finally:
            conn.close()

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest failure first."""
        return self._admin(
            f"SELECT rowid, {_DEAD_COLUMNS} FROM ackbus_dead_letters ORDER BY failed_at"
        )

    def find_dead_letters(self, prefix: str) -> list[DeadLetter]:
        """Dead letters whose hex id starts with ``prefix``."""
        return matching(self.dead_letters(), prefix)

    def remove_dead_letters(self, ids: list[bytes]) -> int:
        """Delete dead letters by id; returns how many existed."""
        conn = self._connect(create=False)
        try:
            with conn:
                cur = conn.executemany(
                    "DELETE FROM ackbus_dead_letters WHERE id = ?", [(i,) for i in ids]
                )
            return cur.rowcount
        finally:
            conn.close()

    def counts(self) -> dict[str, int]:
        """Rows per ackbus table (for tests, benches and operators)."""
        conn = self._connect(create=False)
        try:
            return {
                name: conn.execute(f"SELECT count(*) FROM ackbus_{name}").fetchone()[0]
                for name in ("outbox", "inbox", "dead_letters")
            }
        finally:
            conn.close()

    def _admin(self, sql: str) -> list[DeadLetter]:
        conn = self._connect(create=False)
        try:
            return self._dead_letters_of(conn, sql)
        finally:
            conn.close()

    def _dead_letters_of(self, conn: sqlite3.Connection, sql: str = "") -> list[DeadLetter]:
        """Dead letters read with ``sql`` (all, oldest failure first, by default),
        checked: :class:`~ackbus.StoreError` names a row that is not one ackbus wrote."""
        rows = conn.execute(
            sql or f"SELECT rowid, {_DEAD_COLUMNS} FROM ackbus_dead_letters ORDER BY failed_at"
        )
        return [dead_letter(r[1:], f"{self.path}: ackbus_dead_letters rowid {r[0]}") for r in rows]


def _integrity(conn: sqlite3.Connection, path: Path) -> None:
    """``PRAGMA quick_check``: a damaged store is refused at open, not found half-way
    through reading it back (it reads the whole file: milliseconds for a bounded store)."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise StoreError(
            f"{path} is corrupt ({'; '.join(problems)}); ackbus will not write to it. "
            "Move it aside (its rows may be recoverable with sqlite3's .recover) and start "
            "with a new file"
        )


def select_inbox(conn: sqlite3.Connection, msg_id: bytes) -> InboxRecord | None:
    """The inbox record of ``msg_id`` (:class:`~ackbus.StoreError` if it is damaged)."""
    row = conn.execute(SELECT_INBOX, (order_key(msg_id),)).fetchone()
    return read_inbox(row) if row is not None else None


def stored_inbox(record: InboxRecord) -> tuple[object, ...]:
    """``record`` as an ``ackbus_inbox`` row: its id as its order key (SCHEMA_VERSION)."""
    return (order_key(record.msg_id), *record[1:])


def read_inbox(row: tuple[object, ...], where: str = "") -> InboxRecord:
    """An ``ackbus_inbox`` row, ``rowid`` first, checked, with its message id back."""
    record = inbox_record(row[1:], f"{where}ackbus_inbox rowid {row[0]}")
    return record._replace(msg_id=id_of_order_key(record.msg_id))


def _order_key_sql(value: str | bytes | int | float | None) -> str | bytes | int | float | None:
    """``order_key`` for SQL (the conversion from schema 1): a 16-byte id converted,
    anything else left for the row's check to report."""
    return order_key(value) if isinstance(value, bytes) and len(value) == ID_SIZE else value


def _owner_pid(path: Path) -> str:
    """The pid the owner wrote into the store (best effort, for the error message)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2)
        try:
            row = conn.execute("SELECT value FROM ackbus_meta WHERE key = 'pid'").fetchone()
            return str(row[0]) if row else ""
        finally:
            conn.close()
    except sqlite3.Error:
        return ""
