"""A durable receiver of keyed StartHand messages, for the ordering crash test.

    python tests/durable/ordered_receiver.py --hub tcp://127.0.0.1:5555 --store r.db \
        --runs runs.log --poison t3:7

Each handler run appends ``table_id seats`` to ``--runs`` with one ``write(2)`` (every
run, committed or not: it survives ``kill -9``) and writes one row to the ``hands``
table through ``ctx.tx`` (the transactional effect, committed with the inbox record:
its rowids give the committed order). The message ``--poison TABLE:SEATS`` raises every
time (a transient error: its sender retries it until its attempts run out). Prints
``ready`` once routable; exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal

from ackbus import Context
from ackbus.endpoint import Endpoint
from ackbus.store import SqliteStore
from poker import table_pb2

HANDS = (
    "CREATE TABLE IF NOT EXISTS hands "
    "(table_id TEXT NOT NULL, seats INTEGER NOT NULL, msg_id TEXT NOT NULL)"
)
"""No unique key on purpose: a hand applied twice would show as two rows."""


async def run(args: argparse.Namespace) -> None:
    runs = os.open(args.runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    store = SqliteStore(args.store)
    store.execute_script(HANDS)
    poison_table, _, poison_seats = args.poison.partition(":")
    ep = Endpoint("table", args.hub, store=store, heartbeat=0.25)

    async def on_start_hand(msg: table_pb2.StartHand, ctx: Context) -> None:
        if random.random() < 0.3:
            await asyncio.sleep(random.random() * 0.005)  # widen the window a kill can hit
        os.write(runs, f"{msg.table_id} {msg.seats}\n".encode())
        if msg.table_id == poison_table and str(msg.seats) == poison_seats:
            raise ValueError("poison: this hand never applies")
        assert ctx.tx is not None
        ctx.tx.execute(
            "INSERT INTO hands VALUES (?, ?, ?)", (msg.table_id, msg.seats, ctx.message_id.hex())
        )

    ep.register_handler(table_pb2.StartHand, on_start_hand)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with ep:
        print("ready", ep.identity.instance, flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--poison", default="")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
