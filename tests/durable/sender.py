"""A durable sender process for the crash tests.

    python tests/durable/sender.py --hub tcp://127.0.0.1:5555 --store s.db \
        --accepted accepted.log --count 40 --tag run3

Sends ``--count`` Bye messages, a few at a time; once ``send`` returned (the message
is committed to the outbox) it appends the message id to ``--accepted`` with one
``write(2)``. Every tenth message asks to be rejected (it ends as a dead letter). Then it
waits until everything it sent, and everything an earlier run left in the outbox, is
settled, and prints ``done`` with its counts. Prints ``ready resumed=N`` after start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from ackbus import DeliveryReport, Policy
from ackbus.endpoint import Endpoint
from ackbus.wire_pb2 import Bye
from slow_disk import SlowDiskStore

PATIENT = Policy(
    ack_timeout=0.3, backoff_base=0.02, backoff_cap=0.2, max_attempts=1000, deadline=60
)


async def run(args: argparse.Namespace) -> None:
    accepted = os.open(args.accepted, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    store = SlowDiskStore(args.store, args.slow_commit)
    ep = Endpoint("source", args.hub, store=store, policy=PATIENT, heartbeat=0.25)
    async with ep:
        resumed_log = os.open(args.accepted + ".resumed", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(resumed_log, f"{len(ep.resumed)}\n".encode())
        print(f"ready resumed={len(ep.resumed)}", flush=True)
        reports: list[DeliveryReport] = list(ep.resumed)

        async def one(i: int) -> None:
            text = f"reject {args.tag}-{i}" if i % 10 == 9 else f"{args.tag}-{i}"
            report = await ep.send(Bye(reason=text), wait_ack=False)
            os.write(accepted, f"{report.message_id.hex()}\n".encode())
            reports.append(report)

        for start in range(0, args.count, 5):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 5, args.count))))
            await asyncio.sleep(args.pace)
        async with asyncio.timeout(60):
            for r in reports:
                await r.wait(60)
        summary = {
            "acked": sum(1 for r in reports if r),
            "failed": sum(1 for r in reports if not r),
            "resumed": len(ep.resumed),
        }
    print("done", json.dumps(summary), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--slow-commit", type=float, default=0.0, help="seconds added per commit")
    parser.add_argument("--store", required=True)
    parser.add_argument("--accepted", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--tag", default="m")
    parser.add_argument("--pace", type=float, default=0.02, help="pause between groups of 5")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
