"""The example poker services, one per process: ``table``, ``audit`` or ``lobby``.

    python examples/services.py --service table --hub tcp://127.0.0.1:5555 --log table.log

Each handled message appends one line to ``--log`` ("<type> <message id> <attempt>"),
written with a single ``os.write`` so that it survives ``kill -9``: the demo and the
tests count handler runs from these files. The process prints ``ready`` once its
endpoint is connected, and exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generated"))

from ackbus import Context, Endpoint
from poker import lobby_ackbus, table_ackbus, table_pb2


class RunLog:
    """Appends one line per handler run; each line is one write(2)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, ctx: Context) -> None:
        os.write(self._fd, f"{ctx.message_type} {ctx.message_id.hex()} {ctx.attempt}\n".encode())


class Table(table_ackbus.TableHandler):
    """Deals hands; announces each with a HandStarted event."""

    def __init__(self, ep: Endpoint, log: RunLog, delay: float) -> None:
        self.events = table_ackbus.TableEvents(ep)
        self.log = log
        self.delay = delay
        self.hands = 0

    async def on_start_hand(self, msg: table_pb2.StartHand, ctx: Context) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.log.record(ctx)
        self.hands += 1
        await self.events.publish_hand_started(
            table_id=msg.table_id, hand_number=self.hands, wait_ack=False
        )

    async def on_get_table_state(
        self, msg: table_pb2.GetTableState, ctx: Context
    ) -> table_pb2.TableState:
        return table_pb2.TableState(table_id=msg.table_id, hand_number=self.hands)


class Audit(lobby_ackbus.AuditHandler):
    def __init__(self, log: RunLog) -> None:
        self.log = log

    async def on_hand_started(self, msg: table_pb2.HandStarted, ctx: Context) -> None:
        self.log.record(ctx)


class Lobby(lobby_ackbus.LobbyHandler):
    def __init__(self, log: RunLog) -> None:
        self.log = log

    async def on_hand_started(self, msg: table_pb2.HandStarted, ctx: Context) -> None:
        self.log.record(ctx)


async def run(args: argparse.Namespace) -> None:
    log = RunLog(args.log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ep = Endpoint(
        args.service,
        args.hub,
        instance=args.instance,
        heartbeat=args.heartbeat,
        max_concurrency=args.max_concurrency,
    )
    # Registered before start: the first HELLO carries the handlers, and start()
    # returns once a hub welcomed it, so "ready" means routable.
    if args.service == "table":
        ep.register(Table(ep, log, args.delay))
    elif args.service == "audit":
        ep.register(Audit(log))
    else:
        ep.register(Lobby(log))
    async with ep:
        print("ready", flush=True)
        await stop.wait()
        stats = ep.stats
    # The last line a cleanly stopped service prints: its counters, for the demo.
    print(
        json.dumps(
            {
                "received": stats.received,
                "handled": stats.handled,
                "duplicates": stats.duplicates,
                "handler_errors": stats.handler_errors,
                "acked": stats.acked,
                "failed": sum(stats.failed.values()),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service", choices=["table", "audit", "lobby"], required=True)
    parser.add_argument("--hub", action="append", required=True)
    parser.add_argument("--instance", default=None)
    parser.add_argument("--log", required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per StartHand")
    parser.add_argument("--heartbeat", type=float, default=0.25)
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="messages handled at once"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
