"""Durable mode: a SQLite outbox, inbox and dead letters that survive restarts.

``Endpoint(..., store="sqlite:///service.db")`` keeps every message ``send`` accepted
until it is acked or failed, commits each handled message's inbox record (and the
handler's own writes, ``ctx.tx``) before acknowledging it, and keeps failed messages as
dead letters. docs/durable.md describes the model, the tables and the guarantees.
"""

from ._base import DeadLetter, Durability, InboxRecord, OutboxRow, Store
from ._sqlite import APPLICATION_ID, SCHEMA_VERSION, SqliteStore, open_store
from ._unit import Transaction

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "DeadLetter",
    "Durability",
    "InboxRecord",
    "OutboxRow",
    "SqliteStore",
    "Store",
    "Transaction",
    "open_store",
]
