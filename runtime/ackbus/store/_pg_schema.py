"""The PostgreSQL store's tables, its URL, and creating or checking its schema.

Everything ackbus keeps in PostgreSQL lives in one schema (``ackbus`` unless the URL says
``?schema=NAME``), so a service's own tables can live beside it in the same database.
The schema records its layout version in ``meta``; opening creates a missing schema,
migrates an older one, and refuses a newer one or a schema of the same name that is not
ackbus's, all under a transaction-level advisory lock so that instances starting at once
do not race (docs/durable.md, "PostgreSQL").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import LiteralString
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from ..errors import StoreError
from ._base import Durability, parse_seconds

__all__ = ["LOCK_CLASS", "SCHEMA_VERSION", "PgUrl", "create_or_check", "parse_url", "statement"]

SCHEMA_VERSION = 1
"""The layout of the ackbus schema's tables (``meta.schema_version``)."""

LOCK_CLASS = 0x41434B42
"""First key of ackbus's advisory locks ("ACKB"); the second names what is locked."""
_MIGRATION_LOCK = 0

_TABLES: tuple[LiteralString, ...] = (
    "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE {s}.instances (service text NOT NULL, instance text NOT NULL,"
    " pid integer NOT NULL, host text NOT NULL, started_at double precision NOT NULL,"
    " PRIMARY KEY (service, instance))",
    "CREATE TABLE {s}.outbox (id bytea PRIMARY KEY, service text NOT NULL,"
    " instance text NOT NULL, type text NOT NULL, destination text NOT NULL,"
    " kind integer NOT NULL, request boolean NOT NULL, policy text NOT NULL,"
    " created_at double precision NOT NULL, deadline double precision NOT NULL,"
    " frame bytea NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY)",
    "CREATE INDEX outbox_owner ON {s}.outbox (service, instance, seq)",
    "CREATE TABLE {s}.inbox (service text NOT NULL, id bytea NOT NULL,"
    " outcome integer NOT NULL, finished_at double precision NOT NULL,"
    " response bytea NOT NULL, error_type text NOT NULL, error_message text NOT NULL,"
    " error_permanent boolean NOT NULL, PRIMARY KEY (service, id))",
    "CREATE INDEX inbox_finished ON {s}.inbox (service, finished_at)",
    "CREATE TABLE {s}.dead_letters (id bytea PRIMARY KEY, service text NOT NULL,"
    " type text NOT NULL, destination text NOT NULL, kind integer NOT NULL,"
    " reason text NOT NULL, attempts integer NOT NULL, error text NOT NULL,"
    " created_at double precision NOT NULL, failed_at double precision NOT NULL,"
    " frame bytea NOT NULL)",
    "CREATE INDEX dead_letters_failed ON {s}.dead_letters (failed_at)",
)


_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_OURS = {"schema", "durability", "dead_letters_ttl", "pool_size"}
"""URL options ackbus reads; every other query option goes to libpq as is."""


@dataclass(frozen=True, slots=True)
class PgUrl:
    conninfo: str
    """What psycopg connects with (the URL without ackbus's own options)."""
    location: str
    """The URL with its password hidden, for messages."""
    schema: str
    durability: Durability
    dead_letters_ttl: float | None = None
    pool_size: int | None = None
    """``?pool_size=N``: the store's connections (``None``: the default)."""


def parse_url(url: str) -> PgUrl:
    """``postgresql://user:pw@host:port/db?schema=ackbus&durability=full&sslmode=...``.
    Raises ``ValueError`` naming what is wrong; libpq options are checked by libpq."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"store URL must start with postgresql://, got {url!r}")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in pairs if k in _OURS}
    schema = ours.get("schema", "ackbus")
    if not _NAME.fullmatch(schema):
        raise ValueError(
            f"schema must be a lower-case SQL name (letters, digits, _), got {schema!r} in "
            f"store URL {_hide_password(url)!r}"
        )
    try:
        durability = Durability(ours.get("durability", "full"))
    except ValueError:
        raise ValueError(
            f"durability must be 'full' or 'relaxed', got {ours['durability']!r} in store "
            f"URL {_hide_password(url)!r}"
        ) from None
    rest = [(k, v) for k, v in pairs if k not in _OURS]
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    conninfo = f"{base}?{urlencode(rest)}" if rest else base
    try:
        options = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"bad store URL {_hide_password(url)!r}: {exc}") from None
    if "connect_timeout" not in options:  # a server that does not answer: fail, not hang
        conninfo = f"{base}?{urlencode([*rest, ('connect_timeout', '10')])}"
    ttl = parse_seconds(
        "dead_letters_ttl", [v for k, v in pairs if k == "dead_letters_ttl"], _hide_password(url)
    )
    pool_size: int | None = None
    if "pool_size" in ours:
        text = ours["pool_size"]
        if not text.isdigit() or int(text) < 2:
            raise ValueError(
                f"pool_size must be a whole number >= 2, got {text!r} in store URL "
                f"{_hide_password(url)!r}"
            )
        pool_size = int(text)
    return PgUrl(conninfo, _hide_password(url), schema, durability, ttl, pool_size)


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def statement(text: LiteralString, schema: str) -> sql.Composed:
    """``text`` with ``{s}`` bound to the schema's name (quoted as an identifier)."""
    return sql.SQL(text).format(s=sql.Identifier(schema))


def create_or_check(conn: psycopg.Connection[TupleRow], url: PgUrl) -> None:
    """Create the schema if it does not exist, migrate an older one; refuse a newer one
    or a schema of that name that ackbus did not make. ``conn`` is in autocommit mode."""
    s = url.schema
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _MIGRATION_LOCK))
        found = conn.execute("SELECT to_regclass(%s)", (f"{s}.meta",)).fetchone()
        if found is None or found[0] is None:
            row = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s",
                (s,),
            ).fetchone()
            objects = row[0] if row else 0
            if objects:
                raise StoreError(
                    f"{url.location}: schema {s!r} holds {objects} objects but no ackbus "
                    "meta table: it is not an ackbus store and ackbus will not write to it "
                    "(choose another schema with ?schema=NAME)"
                )
            conn.execute(statement("CREATE SCHEMA IF NOT EXISTS {s}", s))
            for text in _TABLES:
                conn.execute(statement(text, s))
            conn.execute(
                statement("INSERT INTO {s}.meta VALUES ('schema_version', %s)", s),
                (str(SCHEMA_VERSION),),
            )
            return
        row = conn.execute(
            statement("SELECT value FROM {s}.meta WHERE key = 'schema_version'", s)
        ).fetchone()
        if row is None or not str(row[0]).isdigit():
            raise StoreError(f"{url.location}: ackbus schema {s!r} has no schema version (damaged)")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{url.location}: ackbus schema {s!r} has layout version {version}, made by a "
                f"newer ackbus; this one reads version {SCHEMA_VERSION}: upgrade ackbus"
            )
        # version < SCHEMA_VERSION: migrations go here, each step recorded in meta.
