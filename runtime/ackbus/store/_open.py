"""``store=``: a URL or a :class:`Store`, to the store it names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StoreError
from ._base import Store
from ._sqlite import SqliteStore

if TYPE_CHECKING:
    from ._pg import PostgresStore

__all__ = ["open_store", "postgres_store_class"]


def open_store(spec: str | Store) -> Store:
    """A store from a URL or a :class:`Store` as is:

    * ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` (``?durability=relaxed`` to
      skip the fsync at commit): one file per instance;
    * ``postgresql://user@host:port/db`` (``?schema=NAME``, ``?durability=relaxed``,
      and libpq's own options such as ``sslmode``): one database shared by a service's
      instances; needs ``pip install 'ackbus[postgresql]'``.

    A malformed URL raises ``ValueError`` naming it."""
    if isinstance(spec, Store):
        return spec
    if spec.startswith(("postgresql:", "postgres:")):
        return postgres_store_class().from_url(spec)
    if spec.startswith("sqlite:"):
        return SqliteStore.from_url(spec)
    raise ValueError(
        f"store URL must look like sqlite:///path.db or postgresql://user@host/db, got {spec!r}"
    )


def postgres_store_class() -> type[PostgresStore]:
    """:class:`~ackbus.store.PostgresStore`, imported on first use: psycopg is an extra."""
    try:
        from ._pg import PostgresStore
    except ImportError as exc:
        raise StoreError(
            f"a postgresql:// store needs psycopg 3 and psycopg-pool ({exc}): "
            "pip install 'ackbus[postgresql]'"
        ) from None
    return PostgresStore
