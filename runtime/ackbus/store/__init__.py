"""Durable mode: an outbox, inbox and dead letters that survive restarts.

``Endpoint(..., store="sqlite:///service.db")`` (one file per instance) or
``store="postgresql://user@host/db"`` (one database shared by a service's instances)
keeps every message ``send`` accepted until it is acked or failed, commits each handled
message's inbox record (and the handler's own writes, ``ctx.tx``) before acknowledging
it, and keeps failed messages as dead letters. docs/durable.md describes the model, the
tables and the guarantees. ``PostgresStore`` is imported on first use (psycopg is the
``postgresql`` extra).
"""

from typing import TYPE_CHECKING, Any

from ._base import DeadLetter, Durability, InboxRecord, OutboxRow, Store
from ._open import open_store
from ._sqlite import APPLICATION_ID, SCHEMA_VERSION, SqliteStore
from ._tx import BlockingResult, BlockingTx, Tx
from ._unit import Transaction

if TYPE_CHECKING:
    from ._pg import PostgresStore

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "BlockingResult",
    "BlockingTx",
    "DeadLetter",
    "Durability",
    "InboxRecord",
    "OutboxRow",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "Transaction",
    "Tx",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from ._open import postgres_store_class

        return postgres_store_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
