"""A durable receiver process for the crash tests.

    python tests/durable/receiver.py --hub tcp://127.0.0.1:5555 --store r.db --runs runs.log

Each handler run appends the message id to ``--runs`` with one ``write(2)`` before it
returns (a non-transactional effect, which survives ``kill -9``), and writes one row to
the ``effects`` table through ``ctx.tx`` (the transactional effect). A message whose
text starts with ``reject`` is refused permanently (it ends as a dead letter at the
sender). Prints ``ready`` once routable; exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal

from ackbus import Context, Reject
from ackbus.endpoint import Endpoint
from ackbus.wire_pb2 import Bye
from slow_disk import SlowDiskStore

EFFECTS = "CREATE TABLE IF NOT EXISTS effects (msg_id TEXT NOT NULL, text TEXT NOT NULL)"
"""No unique key on purpose: an effect applied twice would show as two rows."""


async def run(args: argparse.Namespace) -> None:
    runs = os.open(args.runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    store = SlowDiskStore(args.store, args.slow_commit)
    store.execute_script(EFFECTS)
    ep = Endpoint("sink", args.hub, store=store, heartbeat=0.25, dedupe_ttl=args.ttl)

    async def on_bye(msg: Bye, ctx: Context) -> None:
        if random.random() < 0.5:
            await asyncio.sleep(random.random() * 0.01)  # widen the window a crash can hit
        os.write(runs, f"{ctx.message_id.hex()}\n".encode())
        if msg.reason.startswith("reject"):
            raise Reject("this one is refused on purpose")
        assert ctx.tx is not None
        ctx.tx.execute("INSERT INTO effects VALUES (?, ?)", (ctx.message_id.hex(), msg.reason))

    ep.register_handler(Bye, on_bye)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with ep:
        print("ready", ep.identity.instance, flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--slow-commit", type=float, default=0.0, help="seconds added per commit")
    parser.add_argument("--store", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--ttl", type=float, default=600.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
