"""Durable mode against memory mode: pipelined acked throughput, same run, same machine.

Three OS processes as in ``bench/endpoint.py`` (hub, receiver, sender on 127.0.0.1), once
per mode:

* ``memory``: no store (the default);
* ``sqlite``: both endpoints with a SQLite store, ``durability=full``: every message's
  outbox row is fsync'd before ``send`` returns, every inbox record before the ack;
* ``relaxed``: the same with ``durability=relaxed`` (no fsync at commit);
* ``postgresql``: both endpoints with a PostgreSQL store (``durability=full``), in one
  database of a throwaway server the bench starts with ``fsync`` on (bench/pg.py); the
  receiver's handler does not touch ``ctx.tx``, so its inbox records go through the
  group commit as SQLite's do.

The sender runs ``--producers`` tasks (as a service serves several requests at once),
each accepting messages in groups of ``--group`` (``ep.send_many(group,
wait_ack=False)``: one admission and, in durable mode, one commit per group, and one
producer's commit overlaps the others' work; against a tree without ``send_many``,
``--trees`` falls back to ``asyncio.gather`` of ``send(wait_ack=False)``, what the
groups rows measured before issue 21), up to ``--window`` in flight; the clock
stops when the last ack arrived. Memory mode runs the very same code. Printed per mode:
msgs/s, and for durable modes the sender's and receiver's transactions (= fsyncs in full
mode) and operations per transaction; then the ratio sqlite / memory. Then, in the same
cluster, ``n / 20`` messages one at a time (send, wait for the ack, next): the round
trip's p50 and p99, which in durable mode include two commits (outbox, inbox).

Each round runs the three modes one after the other; ``--repeat`` rounds (3) give each
figure as the median with min and max, and the ratios are of the medians.

Run: ``.venv/bin/python -m bench.durable [--n 20000] [--repeat 3] [--modes ...]``.

Where the time goes: ``--profile MODE`` runs the pipelined part of one mode once, the
sender (this process) under cProfile, and prints the CPU µs per message of each process
(sender, receiver, hub, and PostgreSQL's server processes), the transactions per
message, and the sender's functions with the most own time.

Two or more versions side by side: ``python -m bench.durable --trees TREE_A TREE_B
[--mode sqlite] [--n 40000] [--repeat 4]`` runs the pipelined part of one mode once per
tree per round (each in a fresh process with ``PYTHONPATH=<tree>/runtime``: this
checkout's benchmark code against each tree's runtime; the trees alternating), and
prints per tree the msgs/s and the CPU µs per message of each process (the sender's
store writer thread included), as medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ackbus import Context, DeliveryReport
from ackbus.endpoint import Endpoint
from ackbus.store import SqliteStore
from ackbus.wire_pb2 import Bye

from . import pg
from .ab import cpu_seconds, summarize
from .endpoint import PAYLOAD, POLICY, _hub_main

MODES = ("memory", "sqlite", "relaxed", "postgresql")


def _receiver_main(
    address: str, store: str | None, concurrency: int | None, up: Any, stop: Any, out: Any
) -> None:
    async def run() -> None:
        async def on_bye(msg: Bye, ctx: Context) -> None:
            return None

        ep = Endpoint("sink", address, store=store, max_concurrency=concurrency)
        ep.register_handler(Bye, on_bye)
        async with ep:
            up.set()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)
            out.put(_commits(ep))

    asyncio.run(run())


def _commits(ep: Endpoint) -> tuple[int, int]:
    store = ep.store
    if isinstance(store, SqliteStore):
        return store.writer.commits, store.writer.ops
    writer = getattr(store, "_writer", None)  # PostgresStore's (psycopg may be absent)
    if writer is not None:
        return writer.commits, writer.ops
    return 0, 0


class DurableCluster:
    """A hub process and a receiver process (with or without a store), torn down on close."""

    def __init__(self, store: str | None, max_concurrency: int | None = None) -> None:
        mp = multiprocessing.get_context("spawn")
        self.stop = mp.Event()
        self.out = mp.Queue()
        q = mp.Queue()
        self.hub = mp.Process(target=_hub_main, args=(q, self.stop), daemon=True)
        self.hub.start()
        self.address: str = q.get(timeout=30)
        up = mp.Event()
        self.receiver = mp.Process(
            target=_receiver_main,
            args=(self.address, store, max_concurrency, up, self.stop, self.out),
            daemon=True,
        )
        self.receiver.start()
        if not up.wait(30):
            raise RuntimeError("receiver did not start")

    def close(self) -> tuple[int, int]:
        """Stop both; the receiver's (transactions, operations)."""
        self.stop.set()
        commits: tuple[int, int] = self.out.get(timeout=30)
        for p in (self.receiver, self.hub):
            p.join(10)
            if p.is_alive():
                p.kill()
        return commits


async def _pipelined(
    address: str,
    store: str | None,
    n: int,
    window: int,
    group: int,
    producers: int = 4,
    pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The pipelined part; with ``pids``, also the CPU µs per message of each of those
    processes and of this one (measured before the endpoint closes: its store's writer
    thread is still counted)."""
    watch = {"sender": os.getpid(), **(pids or {})}
    cpu_of = {name: pg.tree_cpu_seconds if name == "postgres" else cpu_seconds for name in watch}
    async with Endpoint("source", address, window=window, policy=POLICY, store=store) as ep:
        msg = Bye(reason=PAYLOAD)
        for _ in range(200):  # warm-up
            await ep.send(msg)
        before = _commits(ep)
        cpu_before = {name: cpu_of[name](pid) for name, pid in watch.items()}
        start = time.perf_counter()
        reports: list[DeliveryReport] = []

        send_many = getattr(ep, "send_many", None)  # absent from a tree before issue 21

        async def produce(count: int) -> None:
            for i in range(0, count, group):
                batch = min(group, count - i)
                if send_many is not None:
                    reports.extend(await send_many([msg] * batch, wait_ack=False))
                    continue
                reports.extend(
                    await asyncio.gather(*(ep.send(msg, wait_ack=False) for _ in range(batch)))
                )

        share = [n // producers + (1 if k < n % producers else 0) for k in range(producers)]
        await asyncio.gather(*(produce(count) for count in share))
        for r in reports:
            await r.wait(60)
        took = time.perf_counter() - start
        cpu = {
            name: (cpu_of[name](pid) - cpu_before[name]) / n * 1e6 for name, pid in watch.items()
        }
        after = _commits(ep)
        failed = sum(1 for r in reports if not r)
    return {
        "msgs_per_s": n / took,
        "failed": failed,
        "sender_tx": after[0] - before[0],
        "sender_ops": after[1] - before[1],
        "cpu_us": cpu,
    }


async def _sequential(address: str, store: str | None, n: int) -> dict[str, float]:
    """One message at a time, each waiting for its ack: the latency of a commit."""
    async with Endpoint("source", address, policy=POLICY, store=store) as ep:
        msg = Bye(reason=PAYLOAD)
        for _ in range(50):
            await ep.send(msg)
        rtts = []
        for _ in range(n):
            t0 = time.perf_counter()
            report = await ep.send(msg)
            rtts.append(time.perf_counter() - t0)
            assert report
    rtts.sort()
    return {
        "seq_p50_us": rtts[len(rtts) // 2] * 1e6,
        "seq_p99_us": rtts[int(len(rtts) * 0.99)] * 1e6,
    }


def _store_urls(mode: str, folder: Path, url: str | None) -> tuple[str | None, str | None]:
    """The sender's and the receiver's store for ``mode`` (none in memory mode;
    ``url``, a fresh PostgreSQL database, for both in postgresql mode)."""
    if mode == "memory":
        return None, None
    if mode == "postgresql":
        if url is None:
            raise ValueError("the postgresql mode needs a database's URL")
        return url, url
    query = "?durability=relaxed" if mode == "relaxed" else ""
    return (
        f"sqlite:///{folder / mode}-sender.db{query}",
        f"sqlite:///{folder / mode}-receiver.db{query}",
    )


def run_mode(
    mode: str,
    n: int,
    window: int,
    group: int,
    folder: Path,
    producers: int = 4,
    url: str | None = None,
    pg_pid: int | None = None,
    max_concurrency: int | None = None,
) -> dict[str, Any]:
    """One mode's figures (one of :data:`MODES`); SQLite databases go to ``folder``,
    PostgreSQL's to ``url`` (a fresh database; ``pg_pid``, its server's, counts the
    server's CPU too); the receiver's ``max_concurrency`` (``None``: its default, which
    with PostgreSQL is the pool's live transactions). (``bench/__main__.py`` calls this
    with positional arguments up to ``folder``, and keywords for postgresql.)"""
    sender, receiver = _store_urls(mode, folder, url)
    cluster = DurableCluster(receiver, max_concurrency)
    try:
        assert cluster.receiver.pid is not None
        assert cluster.hub.pid is not None
        pids = {"receiver": cluster.receiver.pid, "hub": cluster.hub.pid}
        if pg_pid is not None:
            pids["postgres"] = pg_pid
        figures = asyncio.run(
            _pipelined(cluster.address, sender, n, window, group, producers, pids)
        )
        figures.update(asyncio.run(_sequential(cluster.address, sender, max(n // 20, 100))))
    finally:
        r_tx, r_ops = cluster.close()
    figures["receiver_tx"] = r_tx
    figures["receiver_ops"] = r_ops
    return figures


def _one(
    mode: str,
    n: int,
    window: int,
    group: int,
    producers: int,
    url: str | None = None,
    profiler: cProfile.Profile | None = None,
    pg_pid: int | None = None,
) -> dict[str, Any]:
    """One pipelined run of ``mode`` in a fresh cluster (``--trees`` runs this per tree;
    ``--profile`` with the sender under ``profiler``)."""
    with tempfile.TemporaryDirectory() as tmp:
        sender, receiver = _store_urls(mode, Path(tmp), url)
        cluster = DurableCluster(receiver)
        try:
            assert cluster.receiver.pid is not None
            assert cluster.hub.pid is not None
            pids = {"receiver": cluster.receiver.pid, "hub": cluster.hub.pid}
            if pg_pid is not None:
                pids["postgres"] = pg_pid
            run = _pipelined(cluster.address, sender, n, window, group, producers, pids)
            if profiler is None:
                figures = asyncio.run(run)
            else:
                profiler.enable()
                try:
                    figures = asyncio.run(run)
                finally:
                    profiler.disable()
        finally:
            r_tx, r_ops = cluster.close()
    figures["receiver_tx"] = r_tx
    figures["receiver_ops"] = r_ops
    return figures


def _profile(mode: str, args: argparse.Namespace) -> None:
    """``--profile MODE``: where one pipelined run's time goes (see the module docstring)."""
    with pg.server() if mode == "postgresql" else contextlib.nullcontext() as server:
        if mode == "postgresql" and server is None:
            return

        def one(profiler: cProfile.Profile | None) -> dict[str, Any]:
            url = server.url(server.new_database()) if server is not None else None
            pid = server.proc.pid if server is not None and server.proc is not None else None
            return _one(mode, args.n, args.window, args.group, args.producers, url, profiler, pid)

        f = one(None)
        profiler = cProfile.Profile()
        profiled = one(profiler)
    n = args.n
    print(f"{mode}: {f['msgs_per_s']:,.0f} msgs/s (n={n:,}, not profiled)")
    print("  CPU us per message: " + ", ".join(f"{k} {us:.0f}" for k, us in f["cpu_us"].items()))
    print(
        f"  sender: {f['sender_tx'] / n:.3f} transactions per message "
        f"({f['sender_ops'] / max(f['sender_tx'], 1):.0f} ops each); receiver: "
        f"{f['receiver_tx'] / n:.3f} ({f['receiver_ops'] / max(f['receiver_tx'], 1):.0f} ops each)"
    )
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
    print(f"  the sender under cProfile ({profiled['msgs_per_s']:,.0f} msgs/s profiled):")
    print(out.getvalue())


_ROOT = Path(__file__).resolve().parents[1]
"""This checkout: ``--trees`` runs its benchmark code against each tree's runtime."""


def _trees(trees: list[Path], args: argparse.Namespace) -> None:
    """``--trees``: the trees alternating, round after round; medians per tree."""
    runs: list[list[dict[str, Any]]] = [[] for _ in trees]
    for r in range(args.repeat):
        order = range(len(trees)) if r % 2 == 0 else reversed(range(len(trees)))
        for i in order:
            tree = trees[i].resolve()
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.durable",
                    "--one",
                    args.mode,
                    "--n",
                    str(args.n),
                    "--window",
                    str(args.window),
                    "--group",
                    str(args.group),
                    "--producers",
                    str(args.producers),
                ],
                env={**os.environ, "PYTHONPATH": f"{tree}/runtime:{_ROOT}"},
                cwd=_ROOT,
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            runs[i].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summarize(trees, runs, "msgs_per_s", f"{args.mode} msgs_per_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--group", type=int, default=250)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; the modes alternate within each"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    parser.add_argument("--trees", type=Path, nargs="+", help="source trees side by side")
    parser.add_argument("--mode", choices=("memory", "sqlite", "relaxed"), default="sqlite")
    parser.add_argument("--one", choices=("memory", "sqlite", "relaxed"), help=argparse.SUPPRESS)
    parser.add_argument("--modes", choices=MODES, nargs="+", default=list(MODES))
    parser.add_argument("--profile", choices=MODES, help="where one run's time goes")
    parser.add_argument("--top", type=int, default=25, help="--profile: functions shown")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.n, args.window, args.group, args.producers)))
        return
    if args.trees:
        _trees(args.trees, args)
        return
    if args.profile:
        _profile(args.profile, args)
        return
    with contextlib.ExitStack() as stack:
        modes = list(args.modes)
        server = stack.enter_context(pg.server()) if "postgresql" in modes else None
        if server is None and "postgresql" in modes:
            modes.remove("postgresql")
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir))
        for round_ in range(args.repeat):
            for mode in modes:
                folder = Path(tmp) / str(round_)
                folder.mkdir(exist_ok=True)
                url = server.url(server.new_database()) if mode == "postgresql" and server else None
                f = run_mode(mode, args.n, args.window, args.group, folder, args.producers, url=url)
                runs[mode].append(f)
                print(_line(mode, f), flush=True)
    # On a shared machine one run of each can land in a burst of someone else's load
    # (ratios from 0.3 to 0.7 were seen in a row): the ratio is of medians over rounds
    # that alternate the modes.
    medians = {mode: statistics.median(r["msgs_per_s"] for r in runs[mode]) for mode in modes}
    for mode in modes:
        rates = [r["msgs_per_s"] for r in runs[mode]]
        print(
            f"median {mode:10} {medians[mode]:>9,.0f} msgs/s"
            f"  (min {min(rates):,.0f}, max {max(rates):,.0f}, {len(rates)} runs)"
        )
    if "memory" in medians:
        for mode in (m for m in modes if m != "memory"):
            print(f"ratio {mode}/memory {medians[mode] / medians['memory']:.2f}")


def _line(mode: str, f: dict[str, float]) -> str:
    line = (
        f"{mode:10} {f['msgs_per_s']:>9,.0f} msgs/s  failed={f['failed']:.0f}"
        f"  sequential p50={f['seq_p50_us']:,.0f} us p99={f['seq_p99_us']:,.0f} us"
    )
    if mode != "memory":
        line += (
            f"  sender: {f['sender_tx']:.0f} tx"
            f" ({f['sender_ops'] / max(f['sender_tx'], 1):.0f}"
            f" ops/tx)  receiver (both parts): {f['receiver_tx']:.0f} tx"
            f" ({f['receiver_ops'] / max(f['receiver_tx'], 1):.0f} ops/tx)"
        )
    return line


if __name__ == "__main__":
    main()
