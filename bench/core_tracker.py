"""Micro benchmark of the reliability core's hot path: operations per second, one process.

Per acked message a sender pays ``OutboundTracker.submit`` + ``ack`` (and an occasional
``tick``), a receiver ``InboundDeduper.begin`` + ``finish``, a hub
``RoutingTable.route_command`` + ``on_ack``. The runtime's target is ~40,000 acked
messages/s end to end, so each of these pairs must cost a small fraction of 25 µs.

``.venv/bin/python -m bench.core_tracker`` prints the table; ``run()`` returns it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from ackbus import Identity, Policy
from ackbus.core import InboundDeduper, OutboundTracker, Outcome, RoutingTable

N = 20_000
POLICY = Policy()
RECEIVER = Identity("table", "t-1")


def _rate(fn: Callable[[], object], per_call: int, rounds: int = 5) -> float:
    """Items per second of ``fn`` (which handles ``per_call`` items), best of ``rounds``."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = max(best, per_call / (time.perf_counter() - start))
    return best


def run() -> dict[str, float]:
    rng = random.Random(0)
    ids = [rng.randbytes(16) for _ in range(N)]
    clock = [0.0]

    def tracker_pipelined() -> None:
        """A window's worth in flight: submit 100, then ack them, ticking in between."""
        t = OutboundTracker(window=1000, rng=rng)
        submit, ack = t.submit, t.ack
        now = clock[0]
        for start in range(0, N, 100):
            batch = ids[start : start + 100]
            for msg_id in batch:
                submit(msg_id, msg_type="hand", destination="hub", policy=POLICY, now=now)
            for msg_id in batch:
                ack(msg_id, outcome=Outcome.OK, now=now, receiver=RECEIVER)
            now += 0.0025
            t.tick(now)
        clock[0] = now + 100.0

    def tracker_sequential() -> None:
        t = OutboundTracker(rng=rng)
        submit, ack = t.submit, t.ack
        now = clock[0]
        for msg_id in ids:
            submit(msg_id, msg_type="poker.StartHand", destination="hub", policy=POLICY, now=now)
            ack(msg_id, outcome=Outcome.OK, now=now, receiver=RECEIVER)
            now += 0.00002
        clock[0] = now + 100.0

    def tracker_queued() -> None:
        """Window 1000 with 3,000 more queued behind it (a durable sender whose commits
        outrun its window): each ack group of 100 lets 100 queued go, 100 more queue."""
        t = OutboundTracker(window=1000, rng=rng)
        submit, ack_ok, tick, next_deadline = t.submit, t.ack_ok, t.tick, t.next_deadline
        now = clock[0]
        ahead = 4000
        for msg_id in ids[:ahead]:
            submit(msg_id, "hand", "hub", POLICY, now)
        for start in range(0, N - ahead, 100):
            now += 0.001
            ack_ok(ids[start : start + 100], now, RECEIVER)
            tick(now)
            for msg_id in ids[ahead + start : ahead + start + 100]:
                submit(msg_id, "hand", "hub", POLICY, now)
            next_deadline()  # as the endpoint asks after each batch
        clock[0] = now + 200.0

    def deduper() -> None:
        d = InboundDeduper(capacity=10_000)
        begin, finish = d.begin, d.finish
        now = clock[0]
        for msg_id in ids:
            begin(msg_id, now)
            finish(msg_id, Outcome.OK, now)
            now += 0.00002
        clock[0] = now

    def routing() -> None:
        """A fresh table each round, so every message is routed for the first time."""
        table = RoutingTable()
        for i in range(3):
            table.register(f"t{i}".encode(), Identity("table", str(i)), ["hand"], [], 1000, 0.0)
        route, on_ack = table.route_command, table.on_ack
        now = clock[0]
        for msg_id in ids:
            peer = route("hand", msg_id, None, now)
            assert peer is not None
            on_ack(peer, msg_id)
            now += 0.00002
        clock[0] = now

    return {
        "tracker submit+ack, 100 in flight": _rate(tracker_pipelined, N),
        "tracker submit+ack, one at a time": _rate(tracker_sequential, N),
        "tracker submit+ack_ok+tick, 3,000 queued": _rate(tracker_queued, N - 4000),
        "deduper begin+finish": _rate(deduper, N),
        "routing route_command+on_ack (3 instances)": _rate(routing, N),
    }


def main() -> None:
    for name, rate in run().items():
        print(f"{name:<46} {rate:>12,.0f} msgs/s  {1e6 / rate:6.2f} µs/msg")


if __name__ == "__main__":
    main()
