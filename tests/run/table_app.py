"""The app that tests/run runs with ``ackbus run table_app:app --app-dir tests/run``.

A table service: each StartHand appends "+<message id hex>" to ``TABLE_APP_LOG`` as it
begins, sleeps ``TABLE_APP_DELAY`` seconds (default 0.1), and appends "<message id
hex> <attempt>" as it ends, each line with a single write(2), so the tests count
handler runs per message id across processes and see when one is running. The log is
the app's own resource, opened and closed by its lifespan, which also writes
"startup" and "shutdown" lines to ``TABLE_APP_LOG.hooks``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from ackbus import App, Context
from poker import table_ackbus, table_pb2

app = App("table", heartbeat=0.25)


class Table(table_ackbus.TableHandler):
    def __init__(self, fd: int, delay: float) -> None:
        self.fd = fd
        self.delay = delay

    async def on_start_hand(self, msg: table_pb2.StartHand, ctx: Context) -> None:
        os.write(self.fd, f"+{ctx.message_id.hex()}\n".encode())
        await asyncio.sleep(self.delay)
        os.write(self.fd, f"{ctx.message_id.hex()} {ctx.attempt}\n".encode())


@app.lifespan
async def run_log(app: App) -> AsyncIterator[None]:
    path = os.environ["TABLE_APP_LOG"]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    hooks = os.open(path + ".hooks", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(hooks, b"startup\n")
    app.register(Table(fd, float(os.environ.get("TABLE_APP_DELAY", "0.1"))))
    try:
        yield
    finally:
        os.write(hooks, b"shutdown\n")
        os.close(fd)
        os.close(hooks)
