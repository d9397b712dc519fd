"""A durable event publisher process for the events tests.

    python tests/integration/publisher.py --hub tcp://127.0.0.1:5555 --store p.db \
        --accepted accepted.log --count 200

Publishes ``--count`` poker.HandStarted events through the generated publisher (the
schema declares poker.Audit and poker.Lobby as subscribers) with ``wait_ack=False``; once
``publish`` returned (the event is committed to the outbox) it appends the message id to
``--accepted`` with one ``write(2)``. Prints ``ready resumed=N`` after start, then waits
until everything it published, and everything an earlier run left in the outbox, is
settled, and prints ``done`` with its counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from ackbus import DeliveryReport
from ackbus.endpoint import Endpoint
from poker import table_ackbus, table_pb2

PATIENT = table_ackbus.HAND_STARTED_EVENT_POLICY.with_(
    ack_timeout=0.5, backoff_cap=1.0, max_attempts=10, deadline=60.0, subscriber_policies=()
)
"""The event's policy (and so its declared subscribers), patient enough for the test, and
the same limits for both subscribers (Audit's own 300 s would outlast the test)."""


async def run(args: argparse.Namespace) -> None:
    accepted = os.open(args.accepted, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    async with Endpoint("table", args.hub, store=args.store, heartbeat=0.25) as ep:
        print(f"ready resumed={len(ep.resumed)}", flush=True)
        reports: list[DeliveryReport] = list(ep.resumed)
        client = table_ackbus.TableEvents(ep)
        for i in range(args.count):
            msg = table_pb2.HandStarted(table_id=f"t{i}", hand_number=i)
            report = await client.publish_hand_started(msg, wait_ack=False, policy=PATIENT)
            os.write(accepted, f"{report.message_id.hex()}\n".encode())
            reports.append(report)
            await asyncio.sleep(args.pace)
        async with asyncio.timeout(90):
            for r in reports:
                await r.wait(90)
        summary = {
            "acked": sum(1 for r in reports if r),
            "failed": [str(r.error) for r in reports if not r][:3],
            "resumed": len(ep.resumed),
        }
    print("done", json.dumps(summary), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--accepted", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--pace", type=float, default=0.005, help="pause between events")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
