"""A receiver process of service "sink" whose store is a shared PostgreSQL database, for
tests/durable/test_pg_shared.py.

    python tests/durable/pg_receiver.py --hub tcp://127.0.0.1:5555 --store postgresql://...

Each handler run writes one row to the ``effects`` table through ``ctx.tx`` (a live
transaction, committed with the inbox record: message id, this instance), the
transactional effect that must exist exactly once per message
whichever instance ran it and however many were killed. ``--slow-ack S`` holds each
commit's answer (the acks) for S seconds after the commit, so that a kill often lands
between "committed" and "acked": the retry then reaches a sibling, which must find the
message in the shared inbox. ``--slow-commit S`` holds each transaction open S seconds
after its statements, so that a SIGSTOP lands inside it. Prints ``ready INSTANCE`` once
routable; on SIGTERM prints its stats as JSON and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal

from ackbus import Context
from ackbus.endpoint import Endpoint
from ackbus.store import InboxRecord, PostgresStore, Transaction
from ackbus.store._pg_tx import PgTransaction
from ackbus.store._pg_writer import AsyncConn, PgOp, PgWriter
from ackbus.store._writer import Batch
from ackbus.wire_pb2 import Bye


class SlowStore(PostgresStore):
    """Acks held ``ack_delay`` after each commit; each transaction held open
    ``commit_delay`` after its statements (a SIGSTOP then lands inside it)."""

    def __init__(self, url: str, ack_delay: float, commit_delay: float) -> None:
        super().__init__(url)
        self.ack_delay = ack_delay
        self.commit_delay = commit_delay

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        super().start(loop)
        writer = self.writer
        ack_delay, commit_delay = self.ack_delay, self.commit_delay

        async def slow_commit(batch: Batch) -> None:
            error = await PgWriter._transact(writer, batch)
            await asyncio.sleep(ack_delay)
            batch._finish(error)

        async def slow_apply(conn: AsyncConn, ops: list[PgOp]) -> None:
            await PgWriter._apply(writer, conn, ops)
            await asyncio.sleep(commit_delay)

        writer._commit = slow_commit  # type: ignore[method-assign]
        writer._apply = slow_apply  # type: ignore[method-assign]

    def transaction(self, unit: Transaction) -> PgTransaction:
        return SlowTransaction(unit, self)


class SlowTransaction(PgTransaction):
    """A handler's live ``ctx.tx``, held open ``commit_delay`` once its inbox record is
    claimed, and answered ``ack_delay`` after its commit."""

    __slots__ = ()

    async def _claim(self, conn: AsyncConn, record: InboxRecord) -> bool:
        claimed = await super()._claim(conn, record)
        store = self._store
        assert isinstance(store, SlowStore)
        await asyncio.sleep(store.commit_delay)
        return claimed

    async def commit(self, record: InboxRecord | None) -> None:
        await super().commit(record)
        store = self._store
        assert isinstance(store, SlowStore)
        await asyncio.sleep(store.ack_delay)


async def run(args: argparse.Namespace) -> None:
    # To a file: a pipe nobody reads would fill up and block the process mid-run.
    logging.basicConfig(filename=args.log, level=logging.WARNING, format="%(asctime)s %(message)s")
    store = SlowStore(args.store, args.slow_ack, args.slow_commit)
    ep = Endpoint("sink", args.hub, store=store, heartbeat=0.25)
    instance = ep.identity.instance

    async def on_bye(msg: Bye, ctx: Context) -> None:
        if random.random() < 0.3:
            await asyncio.sleep(random.random() * 0.005)  # widen the windows a kill can hit
        assert ctx.tx is not None
        await ctx.tx.execute(
            "INSERT INTO effects (msg_id, instance) VALUES (%s, %s)",
            (ctx.message_id.hex(), instance),
        )

    ep.register_handler(Bye, on_bye)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with ep:
        print("ready", instance, flush=True)
        await stop.wait()
        stats = ep.stats
    print(json.dumps({"handled": stats.handled, "duplicates": stats.duplicates}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--log", required=True, help="the process's log file")
    parser.add_argument("--slow-ack", type=float, default=0.0, help="seconds after each commit")
    parser.add_argument(
        "--slow-commit", type=float, default=0.0, help="seconds each transaction stays open"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
