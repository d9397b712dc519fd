"""A receiver process whose plain ``def`` handler blocks, for test_sync_handlers.py.

    python tests/integration/blocking_receiver.py --hub tcp://127.0.0.1:5555 --runs runs.log

Synchronous code throughout, as a service built on a blocking driver would be: a
:class:`~ackbus.BlockingEndpoint` whose ``ackbus.Bye`` handler sleeps ``--sleep`` seconds
with ``time.sleep`` and then appends ``<message id hex> <thread name> <handlers running
at its start>`` to ``--runs``.
Prints ``ready`` once welcomed; exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from ackbus import BlockingEndpoint, Context
from ackbus.wire_pb2 import Bye


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", action="append", required=True, help="repeat for several")
    parser.add_argument("--runs", required=True)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--heartbeat", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--max-concurrency", type=int, default=None)
    args = parser.parse_args()
    runs = os.open(args.runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    lock = threading.Lock()
    running = [0]

    def on_bye(msg: Bye, ctx: Context) -> None:
        with lock:
            running[0] += 1
            now = running[0]
        try:
            time.sleep(args.sleep)
        finally:
            with lock:
                running[0] -= 1
        thread = threading.current_thread().name
        os.write(runs, f"{ctx.message_id.hex()} {thread} {now}\n".encode())

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ep = BlockingEndpoint(
        "sink",
        args.hub,
        heartbeat=args.heartbeat,
        workers=args.workers,
        max_concurrency=args.max_concurrency,
    )
    ep.register_handler(Bye, on_bye)  # before start: the first HELLO carries it
    with ep:
        print("ready", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
