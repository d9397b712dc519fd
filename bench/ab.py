"""Two versions of ackbus side by side: one cluster per source tree, runs alternated.

``python -m bench.ab [--hub standalone] [--kind pipelined] [--n 100000] [--rounds 6]
[--size 100] [--window 1000] TREE_A TREE_B [TREE_C ...]`` (each tree a checkout, e.g.
``git worktree add /tmp/old HEAD~1``) starts, per tree, a driver process with
``PYTHONPATH=<tree>/runtime:<tree>`` that builds a :class:`~bench.cluster.Cluster` from
that tree's code, warms it up (``--warm``, 120,000 messages: the deduper and sticky
tables filled, as in a steady state) and waits. Then every round runs the same scenario
(``--size`` payload bytes, ``--window`` in flight) once on each cluster, in alternating
order, so a change of load hits all trees alike; the clusters that are not running sit
idle. Printed per tree: msgs/s (or p50 µs for ``sequential``) as median, min and max over
the rounds, and the median CPU µs per message of each process (from ``/proc/<pid>/stat``).

Clusters of separate runs differ by more than most single changes (±5 % from how the
scheduler places three processes on two cores); alternating runs of live clusters is
what the "side by side" figures in docs/performance.md use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process, all its threads, from ``/proc``."""
    return stat_cpu(f"/proc/{pid}/stat")[1]


def stat_cpu(path: str) -> tuple[str, float]:
    """The name and user + system CPU seconds in a ``/proc`` stat file (a process's,
    or a thread's under ``/proc/PID/task``)."""
    with open(path) as f:
        head, tail = f.read().rsplit(")", 1)
    fields = tail.split()
    return head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(hub: str, warm: int) -> None:
    """The driver: one cluster; runs ``KIND N`` lines from stdin, one JSON line each.
    (An absolute import: the driver runs as a script, with the tree under test first
    on ``PYTHONPATH``, which need not have this file.)"""
    from bench.cluster import Cluster

    with Cluster(hub=hub) as cluster:
        pids = dict(cluster.pids)
        cluster.run("pipelined", 2_000)
        pids["sender"] = cluster.workers[0][0].pid
        cluster.run("pipelined", warm)
        print("ready", flush=True)
        for line in sys.stdin:
            kind, n, size, window = line.split()
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            result = cluster.run(kind, int(n), size=int(size), window=int(window))
            after = {k: cpu_seconds(p) for k, p in pids.items()}
            result.pop("samples", None)
            result["cpu_us"] = {k: (after[k] - before[k]) / int(n) * 1e6 for k in pids}
            print(json.dumps(result), flush=True)


def compare(
    hub: str,
    kind: str,
    n: int,
    rounds: int,
    warm: int,
    trees: list[Path],
    size: int = 100,
    window: int = 1000,
) -> None:
    drivers: list[subprocess.Popen[str]] = []  # one per tree, in order (a tree may repeat)
    try:
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": f"{tree}/runtime:{tree}"}
            proc = subprocess.Popen(
                [sys.executable, __file__, "--drive", "--hub", hub, "--warm", str(warm)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=tree,
            )
            drivers.append(proc)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the cluster of {tree} did not start")
        runs: list[list[dict[str, Any]]] = [[] for _ in trees]
        order = list(range(len(trees)))
        for r in range(rounds):
            for i in order if r % 2 == 0 else order[::-1]:
                proc = drivers[i]
                assert proc.stdin is not None
                assert proc.stdout is not None
                proc.stdin.write(f"{kind} {n} {size} {window}\n")
                proc.stdin.flush()
                runs[i].append(json.loads(proc.stdout.readline()))
    finally:
        for proc in drivers:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    key = "msgs_per_s" if kind == "pipelined" else "p50_us"
    summarize(trees, runs, key, key)


def summarize(trees: list[Path], runs: list[list[dict[str, Any]]], key: str, label: str) -> None:
    """Print per tree the median, min and max of ``key`` over its runs, and the median
    CPU µs per message of each process (each run's ``cpu_us``)."""
    for tree, tree_runs in zip(trees, runs, strict=True):
        values = [run[key] for run in tree_runs]
        cpu = {
            name: statistics.median(run["cpu_us"][name] for run in tree_runs)
            for name in tree_runs[0]["cpu_us"]
        }
        figures = ", ".join(f"{name} {us:.2f}" for name, us in sorted(cpu.items()))
        print(
            f"{tree}: {label} median {statistics.median(values):,.0f} "
            f"(min {min(values):,.0f}, max {max(values):,.0f}, {len(values)} runs); "
            f"CPU µs per message: {figures}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="*", type=Path)
    parser.add_argument("--hub", choices=("standalone", "embedded"), default="standalone")
    parser.add_argument("--kind", choices=("pipelined", "sequential"), default="pipelined")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--window", type=int, default=1000, help="messages in flight")
    parser.add_argument("--warm", type=int, default=120_000, help="messages before the first run")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.hub, args.warm)
        return
    if len(args.trees) < 2:
        parser.error("give two or more source trees")
    trees = [t.resolve() for t in args.trees]
    compare(args.hub, args.kind, args.n, args.rounds, args.warm, trees, args.size, args.window)


if __name__ == "__main__":
    main()
