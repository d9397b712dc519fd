"""A sender process whose orders and messages commit together, for
tests/durable/test_tx_processes.py: each order is one ``ep.transaction()`` that inserts
the order's row and sends ``poker.StartHand`` for it through a generated client bound to
the transaction.

    python tests/durable/tx_sender.py --hub tcp://... --store URL --orders a,b,c --mode M

``--mode commit``: every transaction commits; waits for each message's report.
``--mode rollback``: every transaction raises after its insert and send (rolled back).
``--mode kill``: commits like ``commit``, but the process kills itself with -9 right
after the last transaction's commit, before that message is transmitted (the outbox
has it; nothing went out).
``--mode many``: ``send_many`` of one ``poker.StartHand`` per order (no transaction: the
group's outbox rows commit as one); waits for each message's report.
``--mode many-kill``: ``send_many`` in groups of 10 (``wait_ack=False``), the process
killing itself with -9 right after the last group's commit (earlier groups in flight,
the last not transmitted).
``--mode resume``: opens the same store (same instance) and waits for the messages the
last run left in its outbox.
Prints ``ready`` once connected, then one line of JSON: the reports' outcomes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal

from ackbus import DeliveryReport, Policy
from ackbus.endpoint import Endpoint, _durable
from ackbus.store import Transaction
from ackbus.store._writer import Batch
from poker import table_ackbus, table_pb2

POLICY = Policy(ack_timeout=0.5, max_attempts=100, backoff_cap=0.5, deadline=30.0)


class Rollback(Exception):
    pass


def die_after_commit(n: int) -> None:
    """SIGKILL this process once its ``n``-th transaction committed, before its messages
    are transmitted."""
    transmit = _durable.Durable._transmit
    committed = 0

    def transmit_or_die(self: _durable.Durable, unit: Transaction) -> None:
        nonlocal committed
        if unit.record is None:  # the user's transaction, not a handler's
            committed += 1
            if committed == n:
                os.kill(os.getpid(), signal.SIGKILL)
        transmit(self, unit)

    _durable.Durable._transmit = transmit_or_die  # type: ignore[method-assign]


def die_after_group_commit(n: int) -> None:
    """SIGKILL this process once its ``n``-th ``send_many`` group committed, before that
    group is transmitted."""
    committed = _durable.Durable.committed
    groups = 0

    def committed_or_die(self: _durable.Durable, batch: Batch, report: DeliveryReport) -> None:
        nonlocal groups
        committed(self, batch, report)
        groups += 1
        if groups == n:
            os.kill(os.getpid(), signal.SIGKILL)

    _durable.Durable.committed = committed_or_die  # type: ignore[method-assign]


async def main(args: argparse.Namespace) -> None:
    mark = "%s" if args.store.startswith("postgres") else "?"
    orders = [o for o in args.orders.split(",") if o]
    if args.mode == "kill":
        die_after_commit(len(orders))
    if args.mode == "many-kill":
        die_after_group_commit((len(orders) + 9) // 10)
    ep = Endpoint("front", args.hub, store=args.store, instance="front-1", policy=POLICY)
    async with ep:
        print("ready", flush=True)
        reports = []
        if args.mode == "resume":
            reports = list(ep.resumed)
        if args.mode == "many":
            reports = await ep.send_many(
                [table_pb2.StartHand(table_id=o, seats=6) for o in orders], wait_ack=False
            )
        if args.mode == "many-kill":
            for i in range(0, len(orders), 10):
                group = [table_pb2.StartHand(table_id=o, seats=6) for o in orders[i : i + 10]]
                reports += await ep.send_many(group, wait_ack=False)
        for order in orders if args.mode in ("commit", "rollback", "kill") else []:
            try:
                async with ep.transaction() as tx:
                    await tx.execute(f"INSERT INTO orders VALUES ({mark}, {mark})", (order, 6))
                    client = table_ackbus.TableClient(tx)
                    reports.append(await client.send_start_hand(table_id=order, seats=6))
                    if args.mode == "rollback":
                        raise Rollback(order)
            except Rollback:
                pass
        outcome = []
        for r in reports:
            await asyncio.wait_for(r.wait(), 40.0)
            outcome.append([r.message_id.hex(), r.status.name])
        print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hub", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--orders", required=True)
    parser.add_argument(
        "--mode", choices=["commit", "rollback", "kill", "many", "many-kill", "resume"]
    )
    asyncio.run(main(parser.parse_args()))
