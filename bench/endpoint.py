"""ackbus end to end: sender, hub and receiver in three OS processes on 127.0.0.1.

Scenarios (each returns a dict of figures):

* ``pipelined``: up to ``window`` messages in flight, each acknowledged after the
  receiver's handler ran: msgs/s;
* ``sequential``: send, wait for the ack, next: msgs/s and round-trip p50/p99.

Run alone: ``.venv/bin/python -m bench.endpoint [--n 50000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from typing import Any

from ackbus import Context, Policy
from ackbus.endpoint import Endpoint
from ackbus.hub import Hub
from ackbus.wire_pb2 import Bye

PAYLOAD = "p" * 100
POLICY = Policy(ack_timeout=5.0, deadline=120.0)


def _hub_main(port_q: Any, ready: Any) -> None:
    async def run() -> None:
        async with Hub("tcp://127.0.0.1:0") as hub:
            port_q.put(hub.addresses[0])
            await asyncio.get_running_loop().run_in_executor(None, ready.wait)

    asyncio.run(run())


def _receiver_main(address: str, up: Any, stop: Any) -> None:
    async def run() -> None:
        async def on_bye(msg: Bye, ctx: Context) -> None:
            return None

        ep = Endpoint("sink", address)
        ep.register_handler(Bye, on_bye)
        async with ep:
            up.set()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    asyncio.run(run())


class Cluster:
    """A hub process and a receiver process, torn down on close."""

    def __init__(self) -> None:
        mp = multiprocessing.get_context("spawn")
        self.stop = mp.Event()
        q = mp.Queue()
        self.hub = mp.Process(target=_hub_main, args=(q, self.stop), daemon=True)
        self.hub.start()
        self.address: str = q.get(timeout=30)
        up = mp.Event()
        self.receiver = mp.Process(
            target=_receiver_main, args=(self.address, up, self.stop), daemon=True
        )
        self.receiver.start()
        if not up.wait(30):
            raise RuntimeError("receiver did not start")

    def close(self) -> None:
        self.stop.set()
        for p in (self.receiver, self.hub):
            p.join(10)
            if p.is_alive():
                p.kill()


async def _pipelined(address: str, n: int, window: int) -> dict[str, float]:
    async with Endpoint("source", address, window=window, policy=POLICY) as ep:
        msg = Bye(reason=PAYLOAD)
        for _ in range(200):  # warm-up
            await ep.send(msg)
        start = time.perf_counter()
        reports = [await ep.send(msg, wait_ack=False) for _ in range(n)]
        for r in reports:
            await r.wait(60)
        took = time.perf_counter() - start
        failed = sum(1 for r in reports if not r)
    return {"msgs_per_s": n / took, "failed": failed}


async def _sequential(address: str, n: int) -> dict[str, float]:
    async with Endpoint("source", address, policy=POLICY) as ep:
        msg = Bye(reason=PAYLOAD)
        for _ in range(200):
            await ep.send(msg)
        rtts = []
        start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            report = await ep.send(msg)
            rtts.append(time.perf_counter() - t0)
            assert report
        took = time.perf_counter() - start
    rtts.sort()
    return {
        "msgs_per_s": n / took,
        "p50_us": statistics.median(rtts) * 1e6,
        "p99_us": rtts[int(len(rtts) * 0.99)] * 1e6,
    }


def pipelined(n: int = 50_000, window: int = 1000) -> dict[str, float]:
    cluster = Cluster()
    try:
        return asyncio.run(_pipelined(cluster.address, n, window))
    finally:
        cluster.close()


def sequential(n: int = 3_000) -> dict[str, float]:
    cluster = Cluster()
    try:
        return asyncio.run(_sequential(cluster.address, n))
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    print("pipelined ", pipelined(args.n))
    print("sequential", sequential(3000))


if __name__ == "__main__":
    main()
