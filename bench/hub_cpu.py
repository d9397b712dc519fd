"""A hub's CPU time per 10,000 messages, read from /proc (utime + stime of the hub's
process), with and without an ``ackbus tail`` attached: what tailing costs the hub, and
that nobody tailing costs nothing (docs/operations.md, "ackbus tail").

``.venv/bin/python -m bench.hub_cpu [--n 100000] [--tail]``: the hub is an ``ackbus hub``
subprocess (of the tree on ``PYTHONPATH``, to compare two trees); the sender and the
receiver share this process, pipelined, 100-byte messages, after 500 to warm up. CPU time
moves far less with the machine's load than throughput does; /proc counts in ticks
(10 ms), so give it enough messages.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

from ackbus import Context, Policy
from ackbus.endpoint import Endpoint
from ackbus.wire_pb2 import Bye

from .ab import cpu_seconds
from .brokers import free_port


async def measure(address: str, hub_pid: int, n: int) -> float:
    """Hub CPU seconds per 10,000 messages sent through ``address``."""
    handled = 0

    async def on_bye(msg: Bye, ctx: Context) -> None:
        nonlocal handled
        handled += 1

    rx = Endpoint("rx", address)
    rx.register_handler(Bye, on_bye)
    policy = Policy(ack_timeout=5.0, deadline=120.0)
    async with rx, Endpoint("tx", address, policy=policy) as tx:
        warm = [await tx.send(Bye(reason="warm"), wait_ack=False) for _ in range(500)]
        for r in warm:
            await r.wait(60)
        before = cpu_seconds(hub_pid)
        reports = [await tx.send(Bye(reason="p" * 100), wait_ack=False) for _ in range(n)]
        for r in reports:
            await r.wait(120)
        after = cpu_seconds(hub_pid)
    return (after - before) / n * 10_000


def run(n: int, tail: bool) -> float:
    """A hub (and a tail) in subprocesses, :func:`measure` against them."""
    address = f"tcp://127.0.0.1:{free_port()}"
    hub = subprocess.Popen(
        [sys.executable, "-m", "ackbus.hub", "--bind", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    tailing = None
    try:
        assert hub.stdout is not None
        hub.stdout.readline()
        if tail:
            tailing = subprocess.Popen(
                [sys.executable, "-m", "ackbus.cli", "tail", "--hub", address],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            assert tailing.stderr is not None
            tailing.stderr.readline()  # "tailing ...": the hub taps from now on
        return asyncio.run(measure(address, hub.pid, n))
    finally:
        for proc in (tailing, hub):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--tail", action="store_true", help="with an ackbus tail attached")
    args = parser.parse_args()
    seconds = run(args.n, args.tail)
    print(f"hub CPU per 10,000 messages{' (tailed)' if args.tail else ''}: {seconds:.3f} s")


if __name__ == "__main__":
    main()
