"""A throwaway PostgreSQL server for the bench's PostgreSQL row: the tests' own
(tests/support/pg_server.py: ``initdb`` into a temp folder, ``postgres`` as a child
process listening on a unix socket there and on 127.0.0.1, removed at the end), started
with ``fsync`` on, since the row measures durable commits.

``server()`` is a context manager that yields the running server, or ``None`` after
printing one sentence saying why there is none (no PostgreSQL binaries, psycopg not
installed, the server did not start): the bench then skips the row."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pg_server import PgServer

SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"
"""Where ``pg_server.py`` (and the ``proc_harness.py`` it imports) live."""


@contextlib.contextmanager
def server() -> Iterator[PgServer | None]:
    if str(SUPPORT) not in sys.path:
        sys.path.append(str(SUPPORT))
    try:
        from pg_server import PgServer
    except ImportError as exc:
        print(f"[bench] no PostgreSQL row: {exc} (make setup installs psycopg)", file=sys.stderr)
        yield None
        return
    try:
        pg = PgServer(fsync=True)
        pg.start()
    except (RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"[bench] no PostgreSQL row: {first}", file=sys.stderr)
        yield None
        return
    try:
        yield pg
    finally:
        pg.stop()


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU of the server ``pid`` and of its live child processes (the
    backends serving each connection, the writers and checkpointer), from ``/proc``."""
    from .ab import cpu_seconds

    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:  # ppid
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += cpu_seconds(int(stat.parent.name))
    return total
