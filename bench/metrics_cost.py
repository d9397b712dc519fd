"""What Prometheus metrics cost on the pipelined path: one cluster without, one with,
runs alternated.

``python -m bench.metrics_cost [--n 20000] [--rounds 6] [--warm 20000]`` starts two
clusters of :mod:`bench.cluster` that differ only in ``Setup(metrics=True)`` (both
endpoints built with ``metrics=0``: counters and the histograms of
``ackbus.metrics.PrometheusMiddleware``; the standalone hub with ``--metrics-port 0``),
warms both up, then runs the pipelined scenario on each in alternating order, so a change
of the machine's load hits both alike (as :mod:`bench.ab` does for two trees). Printed:
msgs/s median (min-max) of each, the cost in per cent of the median, and the median CPU
µs per message of each process. ``make bench`` has the same comparison as a row
("Prometheus metrics on" beside the standalone row), from clusters run one after the
other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from .ab import cpu_seconds
from .cluster import Cluster, Setup


def run(n: int, rounds: int, warm: int) -> dict[str, Any]:
    names = ("off", "on")
    with Cluster() as off, Cluster(setup=Setup(metrics=True)) as on:
        clusters = {"off": off, "on": on}
        pids: dict[str, dict[str, int]] = {}
        for name, cluster in clusters.items():
            cluster.run("pipelined", warm)
            pids[name] = {**cluster.pids, "sender": cluster.workers[0][0].pid}
        rates: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, dict[str, list[float]]] = {name: {} for name in names}
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                before = {k: cpu_seconds(p) for k, p in pids[name].items()}
                result = clusters[name].run("pipelined", n)
                after = {k: cpu_seconds(p) for k, p in pids[name].items()}
                if result.get("failed"):
                    raise RuntimeError(f"{result['failed']} messages failed ({name})")
                rates[name].append(result["msgs_per_s"])
                for k in before:
                    cpu[name].setdefault(k, []).append((after[k] - before[k]) / n * 1e6)
    out: dict[str, Any] = {"n": n, "rounds": rounds}
    for name in names:
        out[name] = {
            "msgs_per_s": statistics.median(rates[name]),
            "min": min(rates[name]),
            "max": max(rates[name]),
            "cpu_us": {k: statistics.median(v) for k, v in cpu[name].items()},
        }
    out["cost_pct"] = (1 - out["on"]["msgs_per_s"] / out["off"]["msgs_per_s"]) * 100
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warm", type=int, default=20_000, help="messages before timing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run(args.n, args.rounds, args.warm)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"pipelined, {args.n:,} messages x {args.rounds} rounds, alternated:")
    for name in ("off", "on"):
        fig = result[name]
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(fig["cpu_us"].items()))
        print(
            f"  metrics {name:3}: {fig['msgs_per_s']:,.0f} msgs/s "
            f"({fig['min']:,.0f}-{fig['max']:,.0f}); CPU µs/msg: {cpu}"
        )
    print(f"  cost: {result['cost_pct']:+.1f} % of msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
