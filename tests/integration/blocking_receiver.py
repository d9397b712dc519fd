"""A receiver process whose plain ``def`` handler blocks, for test_sync_handlers.py.

    python tests/integration/blocking_receiver.py --hub tcp://127.0.0.1:5555 --runs runs.log

Synchronous code throughout, as a service built on a blocking driver would be: a
:class:`~ackbus.BlockingEndpoint` whose ``ackbus.Bye`` handler sleeps ``--sleep`` seconds
with ``time.sleep`` and then appends ``<message id hex> <thread name>`` to ``--runs``.
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
    parser.add_argument("--hub", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--heartbeat", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    runs = os.open(args.runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def on_bye(msg: Bye, ctx: Context) -> None:
        time.sleep(args.sleep)
        os.write(runs, f"{ctx.message_id.hex()} {threading.current_thread().name}\n".encode())

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ep = BlockingEndpoint("sink", args.hub, heartbeat=args.heartbeat, workers=args.workers)
    ep.register_handler(Bye, on_bye)  # before start: the first HELLO carries it
    with ep:
        print("ready", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
