"""A store whose every commit takes longer: a slow disk, for the crash-test processes.

It widens the window between "the handler returned" (or "send was called") and "the
commit is on disk", so a ``kill -9`` lands in it often: an endpoint that acknowledged
before its commit, or returned from ``send`` before it, loses messages there.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

from ackbus.store import SqliteStore
from ackbus.store._writer import Batch


class SlowDiskStore(SqliteStore):
    def __init__(self, path: str, delay: float) -> None:
        super().__init__(path)
        self.delay = delay

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        super().start(loop)
        writer = self.writer
        commit = writer._commit
        delay = self.delay

        def slow_commit(conn: sqlite3.Connection, batch: Batch) -> None:
            time.sleep(delay)
            commit(conn, batch)

        writer._commit = slow_commit  # type: ignore[method-assign]
