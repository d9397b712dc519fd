"""A fleet of idle instances for the scale rows (issue 19, item 3): many endpoints of many
services registered at the benchmark's hubs, heartbeating, handling nothing.

``Fleet(addresses, instances)`` starts ``instances`` endpoints in worker processes of
``per_process`` each (one asyncio loop per process), of ``services`` services
(``idle0`` .. ``idle49``, each handling its own type by name), every one given all the
hubs. The rows that carry a fleet compare the hub's routing throughput and latency with
10 instances and with 1,000: a hub whose cost per message grew with the instances it
knows would show it there. :meth:`Fleet.storm` measures a HELLO storm: after the hub
restarts, how long until every instance is registered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from ackbus import Context, Policy
from ackbus.endpoint import Endpoint

from .ab import stat_cpu
from .cluster import Cluster, Setup, _recv, proc_figures

_POLICY = Policy(ack_timeout=5.0, deadline=120.0)
_START_BATCH = 25
"""Endpoints a worker starts at once (a thousand HELLOs in one burst is the storm the
restart measures, not the set-up's business)."""


def _fleet_main(
    conn: Connection, addresses: list[str], first: int, count: int, services: int
) -> None:
    asyncio.run(_fleet(conn, addresses, first, count, services))


async def _fleet(
    conn: Connection, addresses: list[str], first: int, count: int, services: int
) -> None:
    async def idle(payload: dict[str, Any], ctx: Context) -> None:
        return None

    loop = asyncio.get_running_loop()
    endpoints = []
    for j in range(first, first + count):
        ep = Endpoint(f"idle{j % services}", addresses, policy=_POLICY, connect_timeout=60.0)
        ep.register_handler(f"bench.Idle{j % services}", idle)
        endpoints.append(ep)
    try:
        for i in range(0, len(endpoints), _START_BATCH):
            await asyncio.gather(*(ep.start() for ep in endpoints[i : i + _START_BATCH]))
        conn.send("ready")
        while (command := await loop.run_in_executor(None, conn.recv)) != "stop":
            if command == "storm":
                conn.send(await _storm(endpoints))
    finally:
        for ep in endpoints:
            with contextlib.suppress(Exception):
                await ep.close()


def _all_welcomed(endpoints: list[Endpoint]) -> bool:
    return all(ep._proto.welcomed(i) for ep in endpoints for i in range(ep._proto.hubs))


async def _storm(endpoints: list[Endpoint]) -> dict[str, float]:
    """Wait until some endpoint lost its hub (the restart began: up to 10 s), then until
    every one is welcomed again; when (wall clock) each happened."""
    deadline = time.monotonic() + 10
    while _all_welcomed(endpoints) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the protocol's state
        await asyncio.sleep(0.005)
    lost = time.time()
    deadline = time.monotonic() + 60
    while not _all_welcomed(endpoints):
        if time.monotonic() > deadline:
            raise TimeoutError("the fleet was not welcomed again within 60 s")
        await asyncio.sleep(0.005)
    return {"lost": lost, "back": time.time()}


class Fleet:
    """``instances`` idle endpoints in worker processes; close (or ``with``) stops them."""

    def __init__(
        self, addresses: list[str], instances: int, *, services: int = 50, per_process: int = 50
    ) -> None:
        mp = multiprocessing.get_context("spawn")
        self.instances = instances
        self.procs: list[tuple[Any, Connection]] = []
        try:
            for first in range(0, instances, per_process):
                mine, theirs = mp.Pipe()
                count = min(per_process, instances - first)
                proc = mp.Process(
                    target=_fleet_main,
                    args=(theirs, addresses, first, count, min(services, instances)),
                    daemon=True,
                )
                proc.start()
                self.procs.append((proc, mine))
            for proc, conn in self.procs:
                if (ready := _recv(conn, proc)) != "ready":
                    raise RuntimeError(f"a fleet worker failed to start: {ready}")
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.procs]

    def storm(self) -> None:
        """Ask every worker to watch for the hub's restart (call, then restart it, then
        :meth:`storm_results`)."""
        for _, conn in self.procs:
            conn.send("storm")

    def storm_results(self) -> list[dict[str, float]]:
        return [_recv(conn, proc, 90.0) for proc, conn in self.procs]

    def close(self) -> None:
        for _, conn in self.procs:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for proc, _ in self.procs:
            proc.join(20)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.procs = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- figures


def idle_hub(hub_pid: int, seconds: float) -> float:
    """The hub's CPU use, % of one core, over ``seconds`` with no message traffic: what
    its connected instances' heartbeats (and its own to them) cost."""
    return sum(idle_threads(hub_pid, seconds).values())


def idle_threads(hub_pid: int, seconds: float) -> dict[str, float]:
    """:func:`idle_hub` per kind of thread (its name: ``python`` for the event loop,
    ``ZMQbg/IO/0`` for libzmq's I/O thread, ...), % of one core each."""
    before, t0 = _thread_cpu(hub_pid), time.monotonic()
    time.sleep(seconds)
    after, elapsed = _thread_cpu(hub_pid), time.monotonic() - t0
    out: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        out[name] = out.get(name, 0.0) + 100 * used / elapsed
    return out


def _thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """Each thread's name and user + system CPU seconds, from ``/proc/PID/task``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            out[tid] = stat_cpu(f"/proc/{pid}/task/{tid}/stat")
    return out


def storm(cluster: Any, n: int) -> dict[str, Any]:
    """Restart the cluster's hub (kill -9, then the same address) while a sender pipelines
    ``n`` messages: the seconds until every fleet instance is registered again, and the
    sender's failed messages."""
    fleet: Fleet = cluster.fleet
    fleet.storm()
    sent: list[dict[str, Any]] = []
    sender = threading.Thread(target=lambda: sent.append(cluster.run("pipelined", n)))
    sender.start()
    time.sleep(0.3)
    restarted = cluster.restart_hub()
    marks = fleet.storm_results()
    sender.join(300)
    return {
        "instances": fleet.instances,
        "settled_s": max(m["back"] for m in marks) - restarted,
        "sent": n,
        "failed": sent[0]["failed"] if sent else None,
    }


def figures(few: Any, many: Any, idle_seconds: float, storm_n: int) -> dict[str, Any]:
    """The scale section of a bench result: memory per connected instance (the hubs' RSS
    with ``many`` against ``few`` instances), the heartbeats' cost at the hub, and a HELLO
    storm after the hub of ``many`` restarts (last: it changes that hub)."""
    n_few, n_many = few.fleet.instances, many.fleet.instances
    rss_few = proc_figures(few.pids["hub"])["rss_mib"] * 1024
    rss_many = proc_figures(many.pids["hub"])["rss_mib"] * 1024
    threads = idle_threads(many.pids["hub"], idle_seconds)
    return {
        "instances": [n_few, n_many],
        "hub_rss_mib": [round(rss_few / 1024, 1), round(rss_many / 1024, 1)],
        "hub_kib_per_instance": round((rss_many - rss_few) / max(1, n_many - n_few), 1),
        "hub_idle_cpu_pct": [
            round(idle_hub(few.pids["hub"], idle_seconds), 2),
            round(sum(threads.values()), 2),
        ],
        "hub_idle_cpu_pct_by_thread": {k: round(v, 2) for k, v in threads.items() if v},
        "storm": storm(many, storm_n),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.fleet``: the scale rows and figures alone (``make bench`` runs
    them with everything else)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=main.__doc__)
    parser.add_argument("--few", type=int, default=10)
    parser.add_argument("--many", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=1500)
    parser.add_argument("--pipelined", type=int, default=20000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU")
    parser.add_argument(
        "--hub-only", action="store_true", help="no rows: idle CPU and the HELLO storm only"
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="with --hub-only: seconds before measuring"
    )
    args = parser.parse_args(argv)
    if args.hub_only:
        args.reps = 0
    out: dict[str, Any] = {}
    with Cluster(setup=Setup(idle=args.few)) as few, Cluster(setup=Setup(idle=args.many)) as many:
        for rep in range(args.reps):
            for name, cluster in ((args.few, few), (args.many, many)):
                for kind, n in (("sequential", args.sequential), ("pipelined", args.pipelined)):
                    r = cluster.run(kind, n)
                    key = f"{kind}, {name:,} instances"
                    out.setdefault(key, []).append(
                        {k: round(v, 1) for k, v in r.items() if k in ("msgs_per_s", "p50_us")}
                    )
                    print(f"rep {rep + 1}: {key}: {out[key][-1]}", flush=True)
        if args.hub_only:  # the fleet just started: its first heartbeats and retries
            time.sleep(args.settle)
        scale = figures(few, many, args.idle, args.pipelined)
    print(json.dumps({"rows": out, "scale": scale}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
