"""A receiver process whose ``async def`` handler may block its event loop, for
test_stalls.py.

    python tests/integration/stalling_receiver.py --hub tcp://127.0.0.1:5555 --runs runs.log

An :class:`~ackbus.Endpoint` of service "sink" whose ``ackbus.Bye`` handler is an ``async
def`` that calls ``time.sleep(--sleep)`` (blocking the loop, the mistake the watchdog
names) and then appends ``<message id hex> <instance>`` to ``--runs``. Logs to stderr at
WARNING. Prints ``ready`` once welcomed; exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time

from ackbus import Context, Endpoint
from ackbus.wire_pb2 import Bye


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--instance", default="r1")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--heartbeat", type=float, default=0.25)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    runs = os.open(args.runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def on_bye(msg: Bye, ctx: Context) -> None:
        if args.sleep:
            time.sleep(args.sleep)  # noqa: ASYNC251 - the blocking handler under test
        os.write(runs, f"{ctx.message_id.hex()} {args.instance}\n".encode())

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    ep = Endpoint("sink", args.hub, instance=args.instance, heartbeat=args.heartbeat)
    ep.register_handler(Bye, on_bye)
    async with ep:
        print("ready", flush=True)
        await stop.wait()
    print(f"loop_stalls={ep.stats.loop_stalls} ({ep.stats.loop_stalled_s:.1f} s)", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
