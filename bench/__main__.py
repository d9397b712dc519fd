"""``make bench``: ackbus next to raw pyzmq, measured side by side in one run.

``python -m bench`` (quick, about a minute) or ``python -m bench --full`` (bigger
counts, the 1,000,000-message memory run). Every process is a separate OS process on
127.0.0.1; payloads are 100 bytes unless a row says otherwise.

Repetitions are interleaved (baseline, then each ackbus scenario, then the next
repetition) so a change in the machine's load hits all rows alike; each figure is the
median of the repetitions with min and max. Each ackbus row shows its ratio to baseline
(a) of the same run and payload size: msgs/s for pipelined rows, p50 for sequential
ones. The load average before and after is printed: on a shared machine figures move.

The table is printed and written, with every repetition's raw figures, to
``bench/results/<UTC time>-<profile>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import baseline, fleet, pg, plot, transport
from .cluster import Cluster, Setup, json_like, make_keys

RESULTS = Path(__file__).parent / "results"

KB = 1024


SLEEP_MS = 1.0
SLEEP_WORKERS = 8
EVENTS_ROW = "ackbus events, 2 subscriber services each ack"
PG_ROWS = (
    ("ackbus pipelined in groups, PostgreSQL store", None),
    ("ackbus pipelined in groups, PostgreSQL store, max_concurrency=1000", 1000),
)
"""The PostgreSQL rows: the receiver's default ``max_concurrency`` (the pool's live
transactions, 3), and the SQLite row's 1,000 (docs/durable.md, "How many at once")."""
BLOCKING_ROW = f"ackbus def handler sleeping {SLEEP_MS:g} ms, {SLEEP_WORKERS} workers"
"""Its ceiling is SLEEP_WORKERS / SLEEP_MS: 8,000 msgs/s."""
ORDERING_KEYS = 100
METRICS_ROW = "ackbus pipelined, Prometheus metrics on"
"""The standalone row's cluster with ``metrics=0`` on both endpoints (counters and
histograms) and ``--metrics-port 0`` on the hub, against the same row without."""
ORDERED_ROW = f"ackbus pipelined, {ORDERING_KEYS} ordering keys"
"""100 keys x 100 messages (fewer in the tiny profile), message i of key i % 100: one
message of a key in flight at a time, against the unordered standalone row."""


@dataclass(frozen=True)
class Profile:
    """Message counts of one profile (per repetition)."""

    name: str
    reps: int
    pipelined: int
    sequential: int
    oneway: int
    sizes: dict[int, tuple[int, int]]
    """payload bytes -> (messages, window) for the payload rows"""
    senders: tuple[int, ...]
    store: int
    memory: tuple[int, int]
    """message counts at which RSS and fds are sampled (early, late)"""
    note: str = ""
    fleet: tuple[int, int] = (10, 1000)
    """idle instances at the hub for the scale rows: few, many"""
    compressible: tuple[int, int, int] = (100 * 1024, 1_000, 64)
    """(payload bytes, messages, window) of the JSON-like rows, compression off and on"""


QUICK = Profile(
    name="quick",
    reps=3,
    pipelined=20_000,
    sequential=1_500,
    oneway=50_000,
    sizes={10 * KB: (4_000, 1000), 1024 * KB: (60, 8)},
    senders=(4, 16),
    store=4_000,
    memory=(10_000, 100_000),
    note="quick profile: smaller counts; memory is sampled at 10,000 and 100,000 messages "
    "of one run, on the cluster that carried the rows above; --full samples at 100,000 "
    "and 1,000,000",
)
TINY = Profile(
    name="tiny",
    reps=1,
    pipelined=300,
    sequential=50,
    oneway=500,
    sizes={10 * KB: (100, 50)},
    compressible=(100 * KB, 50, 10),
    senders=(2,),
    store=100,
    memory=(100, 300),
    note="tiny profile: a smoke test of the runner; its figures mean nothing",
    fleet=(2, 6),
)
FULL = Profile(
    name="full",
    reps=3,
    pipelined=100_000,
    sequential=5_000,
    oneway=200_000,
    sizes={10 * KB: (20_000, 1000), 1024 * KB: (200, 8)},
    compressible=(100 * KB, 5_000, 64),
    senders=(4, 16),
    store=20_000,
    memory=(100_000, 1_000_000),
)


@dataclass
class Row:
    """One line of the table: its repetitions and what it is compared with."""

    name: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    base: str | None = None
    """name of the baseline (a) row of the same payload"""
    vs: str | None = None
    """name of another row this one is compared with (sqlite against memory)"""

    def med(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if key in r]
        return statistics.median(values) if values else None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reps": len(self.runs)}
        for key in ("msgs_per_s", "p50_us", "p99_us"):
            values = [r[key] for r in self.runs if key in r]
            if values:
                out[key] = statistics.median(values)
                out[key + "_min"] = min(values)
                out[key + "_max"] = max(values)
        failed = sum(r.get("failed", 0) for r in self.runs)
        if failed:
            out["failed"] = failed
        return out


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(profile: Profile, store_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Run every scenario of ``profile``; the JSON-able result."""
    p = profile
    rows: dict[str, Row] = {}

    def row(name: str, base: str | None = None, vs: str | None = None) -> Row:
        if name not in rows:
            rows[name] = Row(name, base=base, vs=vs)
        return rows[name]

    load_before = _load()
    started = time.time()
    store_fn = _store_runner()
    with contextlib.ExitStack() as clusters:
        # The PostgreSQL rows' own throwaway server (fsync on); None: one sentence
        # printed, the rows skipped.
        pg_server = clusters.enter_context(pg.server())
        standalone = clusters.enter_context(Cluster(hub="standalone", senders=1))
        embedded = clusters.enter_context(Cluster(hub="embedded", senders=1))
        # Each of the next clusters differs from the standalone one in one thing only.
        events = clusters.enter_context(
            Cluster(setup=Setup(services=("audit", "lobby"), events=True))
        )
        def_handler = clusters.enter_context(Cluster(setup=Setup(handler="def")))
        ordered = clusters.enter_context(Cluster(setup=Setup(ordering_keys=ORDERING_KEYS)))
        metered = clusters.enter_context(Cluster(setup=Setup(metrics=True)))
        blocking = clusters.enter_context(
            Cluster(setup=Setup(handler="def", sleep_ms=SLEEP_MS, workers=SLEEP_WORKERS))
        )
        three = clusters.enter_context(Cluster(setup=Setup(hubs=3)))
        few = clusters.enter_context(Cluster(setup=Setup(idle=p.fleet[0])))
        many = clusters.enter_context(Cluster(setup=Setup(idle=p.fleet[1])))
        keys = make_keys(store_dir / "keys", ("sink", "source"))
        curve = clusters.enter_context(Cluster(setup=Setup(keys=keys)))
        for rep in range(p.reps):
            log(f"repetition {rep + 1}/{p.reps} (load {_load()})")
            a_pipe, a_seq = "(a) acked, pipelined", "(a) acked, sequential"
            row(a_pipe).runs.append(baseline.acked_pipelined(p.pipelined))
            row(a_seq).runs.append(baseline.acked_sequential(p.sequential))
            row("(b) one-way").runs.append(baseline.oneway(p.oneway))
            # The floor under any hub: a bare router process on ackbus's transport and
            # wire that only forwards (bench/transport.py), same hops as through a hub.
            row("bare router, sequential", base=a_seq).runs.append(
                transport.sequential(p.sequential, forwarded=True)
            )
            row("bare router, pipelined", base=a_pipe).runs.append(
                transport.pipelined(p.pipelined, forwarded=True)
            )
            for name, cluster in (("standalone", standalone), ("embedded", embedded)):
                row(f"ackbus sequential, {name} hub", base=a_seq).runs.append(
                    cluster.run("sequential", p.sequential)
                )
                row(f"ackbus pipelined, {name} hub", base=a_pipe).runs.append(
                    cluster.run("pipelined", p.pipelined)
                )
            for kind, base in (("sequential", a_seq), ("pipelined", a_pipe)):
                n = p.sequential if kind == "sequential" else p.pipelined
                one_hub = f"ackbus {kind}, standalone hub"
                row(f"ackbus {kind}, three hubs", base=base, vs=one_hub).runs.append(
                    three.run(kind, n)
                )
                fewer = f"ackbus {kind}, {p.fleet[0]:,} instances at the hub"
                row(fewer, base=base).runs.append(few.run(kind, n))
                more = f"ackbus {kind}, {p.fleet[1]:,} instances at the hub"
                row(more, base=base, vs=fewer).runs.append(many.run(kind, n))
            for senders in p.senders:
                row(f"ackbus pipelined, {senders} senders", base=a_pipe).runs.append(
                    standalone.run(
                        "pipelined",
                        p.pipelined // senders,
                        senders=senders,
                        window=max(1, 1000 // senders),
                    )
                )
            for size, (n, window) in p.sizes.items():
                label = _size(size)
                a_size = f"(a) acked, pipelined, {label}"
                row(a_size).runs.append(baseline.acked_pipelined(n, window, size))
                row(f"ackbus pipelined, {label}", base=a_size).runs.append(
                    standalone.run("pipelined", n, window=window, size=size)
                )
            size, n, window = p.compressible
            label = f"{_size(size)} JSON"
            a_json = f"(a) acked, pipelined, {label}"
            payload = json_like(size).encode()
            row(a_json).runs.append(baseline.acked_pipelined(n, window, payload=payload))
            plain_json = f"ackbus pipelined, {label}"
            row(plain_json, base=a_json).runs.append(
                standalone.run("pipelined", n, window=window, size=size, json=True)
            )
            # zstd above 1 KiB (the zstd extra): sender compresses, hub forwards as is,
            # receiver decompresses
            row(f"ackbus pipelined, {label}, zstd", base=a_json, vs=plain_json).runs.append(
                standalone.run(
                    "pipelined", n, window=window, size=size, json=True, compress_above=KB
                )
            )
            row(EVENTS_ROW, base=a_pipe).runs.append(events.run("pipelined", p.pipelined))
            unordered = "ackbus pipelined, standalone hub"
            row(ORDERED_ROW, base=a_pipe, vs=unordered).runs.append(
                ordered.run("pipelined", min(p.pipelined, ORDERING_KEYS * 100))
            )
            row(METRICS_ROW, base=a_pipe, vs=unordered).runs.append(
                metered.run("pipelined", p.pipelined)
            )
            row("ackbus pipelined, def handler (worker pool)", base=a_pipe).runs.append(
                def_handler.run("pipelined", p.pipelined)
            )
            row(BLOCKING_ROW, base=a_pipe).runs.append(blocking.run("pipelined", p.pipelined // 10))
            a_curve = "(a) acked, pipelined, CURVE"
            row(a_curve).runs.append(baseline.acked_pipelined(p.pipelined, curve=True))
            plain = "ackbus pipelined, standalone hub"
            row("ackbus pipelined, CURVE hub", base=a_curve, vs=plain).runs.append(
                curve.run("pipelined", p.pipelined)
            )
            mem = row("ackbus pipelined in groups, memory store", base=a_pipe)
            mem.runs.append(store_fn("memory", p.store, store_dir))
            row("ackbus pipelined in groups, SQLite store", base=a_pipe, vs=mem.name).runs.append(
                store_fn("sqlite", p.store, store_dir)
            )
            if pg_server is not None:
                for name, concurrency in PG_ROWS:
                    url = pg_server.url(pg_server.new_database())
                    assert pg_server.proc is not None
                    row(name, base=a_pipe, vs=mem.name).runs.append(
                        store_fn(
                            "postgresql",
                            p.store,
                            store_dir,
                            url=url,
                            pg_pid=pg_server.proc.pid,
                            max_concurrency=concurrency,
                        )
                    )
        log(f"memory run: {p.memory[1]:,} messages (load {_load()})")
        memory = standalone.run("pipelined", p.memory[1], checkpoints=p.memory)
        log(f"scale: {p.fleet[1]:,} instances idle, then a hub restart (load {_load()})")
        scale = fleet.figures(few, many, 3.0 if p is TINY else 10.0, p.pipelined)
    return {
        **sitting(p.name, p.note, started, load_before),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
        },
        "reps": p.reps,
        "rows": {
            name: {**r.summary(), **_ratios(r, rows), "raw": r.runs} for name, r in rows.items()
        },
        "memory": _memory(memory, p.memory),
        "scale": scale,
    }


def sitting(profile: str, note: str, started: float, load_before: str) -> dict[str, Any]:
    """A result's first fields: its profile, when it started, how long, the load around it."""
    return {
        "profile": profile,
        "note": note,
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "load_before": load_before,
        "load_after": _load(),
    }


def _store_runner() -> Callable[..., dict[str, Any]]:
    """The store rows: ``bench.durable.run_mode`` (its scenario: sends accepted in
    groups, one group commit each) when it exists, else the same cluster as above with
    ``store=`` on both endpoints."""
    try:
        from . import durable

        run_mode: Callable[..., dict[str, Any]] | None = getattr(durable, "run_mode", None)
    except ImportError:
        run_mode = None
    if run_mode is not None:
        found = run_mode

        def via_durable(mode: str, n: int, folder: Path, **pg_options: Any) -> dict[str, Any]:
            return found(mode, n, 1000, 500, folder, **pg_options)

        return via_durable

    def via_cluster(mode: str, n: int, folder: Path, **pg_options: Any) -> dict[str, Any]:
        if mode == "postgresql":
            with Cluster(store=pg_options["url"]) as cluster:
                return cluster.run("pipelined", n, store=pg_options["url"])
        url = None if mode == "memory" else f"sqlite:///{folder}/{time.time_ns()}"
        with Cluster(store=f"{url}-receiver.db" if url else None) as cluster:
            return cluster.run("pipelined", n, store=f"{url}-sender.db" if url else None)

    return via_cluster


def _ratios(r: Row, rows: dict[str, Row]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = rows[r.base] if r.base else None
    if base is not None:
        for key, name in (("msgs_per_s", "ratio_msgs_per_s"), ("p50_us", "ratio_p50")):
            mine, theirs = r.med(key), base.med(key)
            if mine is not None and theirs:
                out[name] = mine / theirs
    if r.vs is not None:
        mine, theirs = r.med("msgs_per_s"), rows[r.vs].med("msgs_per_s")
        if mine is not None and theirs:
            out["ratio_to_compared"] = mine / theirs
            out["compared_with"] = r.vs
    return out


def _memory(result: dict[str, Any], marks: tuple[int, int]) -> dict[str, Any]:
    early, late = (result["samples"][str(m)] for m in marks)
    out: dict[str, Any] = {"early": marks[0], "late": marks[1], "msgs_per_s": result["msgs_per_s"]}
    for proc in early:
        out[proc] = {
            "rss_mib": [early[proc]["rss_mib"], late[proc]["rss_mib"]],
            "rss_growth": late[proc]["rss_mib"] / early[proc]["rss_mib"] - 1,
            "fds": [early[proc]["fds"], late[proc]["fds"]],
        }
    return out


def _size(size: int) -> str:
    return f"{size // (1024 * KB)} MB" if size >= 1024 * KB else f"{size // KB} KB"


def _rate(fig: dict[str, Any]) -> str:
    if "msgs_per_s" not in fig:
        return ""
    return f"{fig['msgs_per_s']:,.0f} ({fig['msgs_per_s_min']:,.0f}-{fig['msgs_per_s_max']:,.0f})"


def heading(result: dict[str, Any], title: str, versions: str = "") -> str:
    """The line above a table: profile, time, load, machine, repetitions."""
    machine = result["machine"]
    return (
        f"{title}, {result['profile']} profile, {result['when']}; "
        f"load {result['load_before']} → {result['load_after']}; "
        f"{machine['cpus']} cores, Python {machine['python']}, "
        f"pyzmq {machine['pyzmq']}{versions}; median of {result['reps']} (min-max), "
        f"{result['seconds']:.0f} s"
    )


def _cells(fig: dict[str, Any]) -> tuple[str, str, str, str]:
    """A row's table cells: ratio to (a) in msgs/s, p50 µs, p99 µs, ratio to (a) in p50."""
    ratio = f"{fig['ratio_msgs_per_s']:.2f}" if "ratio_msgs_per_s" in fig else ""
    p50 = f"{fig['p50_us']:.0f}" if "p50_us" in fig else ""
    p99 = f"{fig['p99_us']:.0f}" if "p99_us" in fig else ""
    rp50 = f"{fig['ratio_p50']:.2f}" if "ratio_p50" in fig else ""
    return ratio, p50, p99, rp50


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table (what the README and docs carry)."""
    lines = [
        heading(result, "ackbus bench"),
        "",
        "| scenario | msgs/s (min-max) | x (a) msgs/s | p50 µs | p99 µs | x (a) p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, fig in result["rows"].items():
        ratio, p50, p99, rp50 = _cells(fig)
        if "ratio_to_compared" in fig:
            ratio += f" ({fig['ratio_to_compared']:.2f} x {fig['compared_with']})"
        if "failed" in fig:
            name += f" ({fig['failed']} FAILED)"
        lines.append(f"| {name} | {_rate(fig)} | {ratio} | {p50} | {p99} | {rp50} |")
    mem = result["memory"]
    lines += [
        "",
        f"Memory and descriptors after {mem['early']:,} and {mem['late']:,} messages "
        f"(pipelined, {mem['msgs_per_s']:,.0f} msgs/s):",
        "",
        "| process | RSS MiB | growth | fds |",
        "|---|---:|---:|---:|",
    ]
    for proc in ("sender", "hub", "receiver"):
        if proc in mem:
            m = mem[proc]
            lines.append(
                f"| {proc} | {m['rss_mib'][0]:.1f} → {m['rss_mib'][1]:.1f} | "
                f"{m['rss_growth']:+.1%} | {m['fds'][0]} → {m['fds'][1]} |"
            )
    if "scale" in result:
        sc = result["scale"]
        few, many = sc["instances"]
        storm = sc["storm"]
        by_thread = ", ".join(
            f"{name} {pct:.1f} %"
            for name, pct in sorted(sc.get("hub_idle_cpu_pct_by_thread", {}).items())
        )
        lines += [
            "",
            f"Scale: the hub with {few:,} and {many:,} idle instances of 50 services: RSS "
            f"{sc['hub_rss_mib'][0]} and {sc['hub_rss_mib'][1]} MiB "
            f"({sc['hub_kib_per_instance']} KiB per instance); idle, their heartbeats cost it "
            f"{sc['hub_idle_cpu_pct'][0]} % and {sc['hub_idle_cpu_pct'][1]} % of one core"
            f"{f' ({by_thread})' if by_thread else ''}. "
            f"Hub killed -9 and restarted with {storm['instances']:,} instances and a sender "
            f"pipelining {storm['sent']:,} messages: every instance registered again "
            f"{storm['settled_s']:.2f} s after the restart; {storm['failed']} messages failed.",
        ]
    if result["note"]:
        lines += ["", f"({result['note']})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="bigger counts, 1M-message memory")
    parser.add_argument("--tiny", action="store_true", help="a few seconds; checks the runner")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    profile = TINY if args.tiny else FULL if args.full else QUICK

    def log(line: str) -> None:
        if not args.quiet:
            print(f"[bench] {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="ackbus-bench-") as tmp:
        result = measure(profile, Path(tmp), log)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.out / f"{stamp}-{profile.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwritten to {path}")
    print(plot.written(path, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
