"""``make bench-peers``: ackbus beside real brokers, the same workloads in one sitting.

``python -m bench.peers [--full] [--only nats-core,jetstream,redis,rabbitmq]`` starts
real NATS (with JetStream), Redis and RabbitMQ servers (``bench/brokers.py``: the
Debian packages' binaries, in a temp folder, on free ports of 127.0.0.1, stopped at
the end), and measures, beside raw pyzmq baseline (a) and ackbus through a standalone
and an embedded hub (``bench/baseline.py``, ``bench/cluster.py``), each broker with its
Python client (``bench/peer_clients.py``: nats-py, redis-py's asyncio client, aio-pika).
Producer and consumer are separate OS processes; each row is confirmed end to end, and
says what "done" means for it (:data:`DONE`).

- *sequential*: one message at a time, the next when the last is done: p50/p99 of
  that round trip;
- *pipelined*: up to 1,000 not yet done in flight: msgs/s until the last is done;
- payloads of 100 bytes and 10 KB; ackbus with a SQLite store at 100 bytes
  (``bench.durable.run_mode``: pipelined in groups, then one at a time).

Repetitions are interleaved (every row, then the next repetition), each figure is the
median with min and max, and each row's ratio is to (a) of the same kind and payload.
The table goes to stdout and, with every repetition's figures, to
``bench/results/<UTC time>-peers.json`` and ``.md``, and a picture to ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import zmq

from . import baseline, plot
from .__main__ import RESULTS, Row, _cells, _load, _rate, _ratios, _size, heading, sitting
from .brokers import PACKAGES, Servers
from .cluster import Cluster, _recv, _stop
from .peer_clients import DONE as PEER_DONE
from .peer_clients import SYSTEMS, Driver, consume, producer

KB = 1024
WINDOW = 1000
WARMUP = 200
SIZES = (100, 10 * KB)
RAW, ACKBUS, ACKBUS_SQLITE = "raw pyzmq", "ackbus", "ackbus, SQLite store"
DONE = {
    RAW: "handled: the receiving process got it and sent its id back (plain pyzmq, "
    "nothing else: the practical limit of an acknowledged exchange in Python)",
    ACKBUS: "handled: the receiver's handler returned, and its ack, forwarded by the hub, "
    "settled the sender's report (in memory, no store)",
    ACKBUS_SQLITE: "stored and handled: in the sender's SQLite outbox and the receiver's "
    "inbox, each commit fsync'd (durability=full), the ack after the handler ran and "
    "the inbox committed",
    **{SYSTEMS[key][0]: text for key, text in PEER_DONE.items()},
}
SHORT = {
    RAW: "handled",
    ACKBUS: "handled",
    ACKBUS_SQLITE: "stored, handled",
    "NATS core": "handled",
    "NATS JetStream": "stored, acked, replied",
    "Redis Streams": "stored, acked, replied",
    "RabbitMQ": "stored, acked, replied",
}
CLIENTS = {"nats": "nats-py", "redis": "redis", "rabbitmq": "aio-pika"}
"""Broker -> its client's distribution (in ``ackbus[peers]``)."""
_MODULES = {"nats": "nats", "redis": "redis", "rabbitmq": "aio_pika"}


@dataclass(frozen=True)
class Profile:
    name: str
    reps: int
    pipelined: dict[int, int]
    """payload bytes -> messages per pipelined run"""
    sequential: int
    store: int
    note: str = ""


QUICK = Profile("peers", 3, {100: 10_000, 10 * KB: 4_000}, 1_000, 4_000)
FULL = Profile("peers-full", 3, {100: 50_000, 10 * KB: 20_000}, 5_000, 20_000)
TINY = Profile(
    "peers-tiny", 1, {100: 300, 10 * KB: 100}, 50, 100, "tiny: checks the runner, means nothing"
)


# --------------------------------------------------------------------------- workers


def _consumer_main(conn: Connection, system: str, url: str) -> None:
    async def run() -> None:
        stop = asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await consume(system, url, lambda: conn.send("ready"), stop)

    asyncio.run(run())


def _producer_main(conn: Connection) -> None:
    while (job := conn.recv()) is not None:
        try:
            result = asyncio.run(_produce(job))
        except Exception as exc:  # reported to the runner, which records it on the row
            result = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(result)


async def _produce(job: dict[str, Any]) -> dict[str, Any]:
    client = producer(job["system"])
    driver = Driver(client)
    await client.open(job["url"], driver)
    payload = b"p" * job["size"]
    try:
        await driver.run(WARMUP, min(job["window"], 100), payload)
        elapsed = await driver.run(job["n"], job["window"], payload)
    finally:
        await client.close()
    out: dict[str, Any] = {"msgs_per_s": job["n"] / elapsed, "n": job["n"]}
    if job["window"] == 1:
        rtts = sorted(driver.rtts)
        out["p50_us"] = rtts[len(rtts) // 2] / 1000
        out["p99_us"] = rtts[int(len(rtts) * 0.99)] / 1000
    if driver.failed:
        out["failed"] = driver.failed
        out["errors"] = driver.errors
    return out


class Peers:
    """A consumer process per system (started at once, consuming until closed) and one
    producer process that runs every job."""

    def __init__(self, urls: dict[str, str]) -> None:
        mp = multiprocessing.get_context("spawn")
        self.urls = urls
        self.consumers: list[tuple[Any, Connection]] = []
        mine, theirs = mp.Pipe()
        self.producer = mp.Process(target=_producer_main, args=(theirs,), daemon=True)
        self.conn = mine
        try:
            self.producer.start()
            for system, url in urls.items():
                mine, theirs = mp.Pipe()
                proc = mp.Process(target=_consumer_main, args=(theirs, system, url), daemon=True)
                proc.start()
                self.consumers.append((proc, mine))
                if (ready := _recv(mine, proc)) != "ready":
                    raise RuntimeError(f"the {system} consumer did not start: {ready}")
        except BaseException:
            self.close()
            raise

    def run(self, system: str, kind: str, n: int, size: int) -> dict[str, Any]:
        window = 1 if kind == "sequential" else WINDOW
        job = {"system": system, "url": self.urls[system], "n": n, "size": size, "window": window}
        self.conn.send(job)
        result: dict[str, Any] = _recv(self.conn, self.producer)
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        _stop(self.producer)
        for proc, conn in self.consumers:
            with contextlib.suppress(OSError):
                conn.send("stop")
            _stop(proc)
        self.consumers = []

    def __enter__(self) -> Peers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- the run


def _clients_missing(brokers: set[str]) -> dict[str, str]:
    return {
        b: f"its client is not installed: pip install 'ackbus[peers]' ({CLIENTS[b]})"
        for b in brokers
        if importlib.util.find_spec(_MODULES[b]) is None
    }


def _versions(servers: dict[str, str]) -> dict[str, str]:
    out = {"python": platform.python_version(), "pyzmq": zmq.__version__}
    out["libzmq"] = zmq.zmq_version()
    for broker, package in PACKAGES.items():
        if broker in servers:
            out[package] = servers[broker]
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[CLIENTS[broker]] = importlib.metadata.version(CLIENTS[broker])
    return out


def measure(
    p: Profile, folder: Path, log: Callable[[str], None], systems: tuple[str, ...]
) -> dict[str, Any]:
    """Every row of profile ``p`` for ``systems`` (keys of ``SYSTEMS``); the JSON-able
    result."""
    rows: dict[str, Row] = {}
    who: dict[str, str] = {}

    def row(name: str, system: str, base: str | None = None, vs: str | None = None) -> Row:
        if name not in rows:
            rows[name] = Row(name, base=base, vs=vs)
            who[name] = system
        return rows[name]

    def add(r: Row, figures: dict[str, Any]) -> None:
        if "error" in figures:
            log(f"{r.name}: {figures['error']}")
            errors.setdefault(r.name, []).append(figures["error"])
        else:
            r.runs.append(figures)

    errors: dict[str, list[str]] = {}
    brokers = {SYSTEMS[s][1] for s in systems}
    load_before = _load()
    started = time.time()
    with contextlib.ExitStack() as stack:
        servers = stack.enter_context(Servers(folder / "servers", log, tuple(sorted(brokers))))
        skipped = {**servers.skipped, **_clients_missing(brokers - set(servers.skipped))}
        urls = {
            s: servers.running[SYSTEMS[s][1]].url for s in systems if SYSTEMS[s][1] not in skipped
        }
        log(f"consumers: {', '.join(urls) or 'none'} (load {_load()})")
        peers = stack.enter_context(Peers(urls))
        standalone = stack.enter_context(Cluster(hub="standalone"))
        embedded = stack.enter_context(Cluster(hub="embedded"))
        for rep in range(p.reps):
            log(f"repetition {rep + 1}/{p.reps} (load {_load()})")
            for size in SIZES:
                tail = "" if size == 100 else f", {_size(size)}"
                n = p.pipelined[size]
                for kind in ("sequential", "pipelined"):
                    count = p.sequential if kind == "sequential" else n
                    a = row(f"(a) acked, {kind}{tail}", RAW)
                    if kind == "sequential":
                        add(a, baseline.acked_sequential(count, size))
                    else:
                        add(a, baseline.acked_pipelined(count, WINDOW, size))
                    for hub, cluster in (("standalone", standalone), ("embedded", embedded)):
                        r = row(f"ackbus {kind}, {hub} hub{tail}", ACKBUS, base=a.name)
                        add(r, cluster.run(kind, count, window=WINDOW, size=size))
                    for system in urls:
                        r = row(f"{SYSTEMS[system][0]}, {kind}{tail}", SYSTEMS[system][0], a.name)
                        add(r, peers.run(system, kind, count, size))
            _store_rows(p, folder, row, add)
    result_rows: dict[str, Any] = {}
    for name, r in rows.items():
        fig = {**r.summary(), **_ratios(r, rows), "system": who[name], "raw": r.runs}
        if name in errors:
            fig["errors"] = errors[name]
        result_rows[name] = fig
    return {
        "title": "ackbus and brokers",
        **sitting(p.name, p.note, started, load_before),
        "machine": {"cpus": os.cpu_count(), **_versions(servers.versions)},
        "reps": p.reps,
        "window": WINDOW,
        "rows": result_rows,
        "done": {who_: DONE[who_] for who_ in dict.fromkeys(who.values())},
        "skipped": {
            SYSTEMS[s][0]: skipped[SYSTEMS[s][1]] for s in systems if SYSTEMS[s][1] in skipped
        },
    }


def _store_rows(
    p: Profile,
    folder: Path,
    row: Callable[..., Row],
    add: Callable[[Row, dict[str, Any]], None],
) -> None:
    """ackbus with a SQLite store on both endpoints (``bench.durable``'s scenario:
    pipelined in groups of 500, then one at a time), split into its two rows."""
    from . import durable

    store = folder / f"store-{time.time_ns()}"
    store.mkdir()
    figures = durable.run_mode("sqlite", p.store, WINDOW, 500, store)
    pipelined = row(
        "ackbus pipelined in groups, SQLite store", ACKBUS_SQLITE, "(a) acked, pipelined"
    )
    add(pipelined, {"msgs_per_s": figures["msgs_per_s"]})
    sequential = row("ackbus sequential, SQLite store", ACKBUS_SQLITE, "(a) acked, sequential")
    p50, p99 = figures["seq_p50_us"], figures["seq_p99_us"]
    add(sequential, {"msgs_per_s": 1e6 / p50, "p50_us": p50, "p99_us": p99})


# --------------------------------------------------------------------------- output


def table(result: dict[str, Any]) -> str:
    """The result as Markdown: the table, what each row's "done" means, what was left out."""
    machine = result["machine"]
    servers = ", ".join(f"{p} {machine[p]}" for p in PACKAGES.values() if p in machine)
    clients = ", ".join(f"{c} {machine[c]}" for c in CLIENTS.values() if c in machine)
    versions = f" (libzmq {machine['libzmq']}); {servers}; {clients}"
    lines = [
        heading(result, result["title"], versions),
        "",
        "| row | done | msgs/s (min-max) | x (a) msgs/s | p50 µs | p99 µs | x (a) p50 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, fig in result["rows"].items():
        ratio, p50, p99, rp50 = _cells(fig)
        label = name
        if "failed" in fig:
            label += f" ({fig['failed']} FAILED)"
        if "errors" in fig:
            label += f" ({len(fig['errors'])} runs in error: {fig['errors'][0]})"
        done = SHORT.get(fig["system"], "")
        lines.append(f"| {label} | {done} | {_rate(fig)} | {ratio} | {p50} | {p99} | {rp50} |")
    lines += ["", "What done means, per row:", ""]
    lines += [f"- **{system}**: {text}." for system, text in result["done"].items()]
    if result["skipped"]:
        lines += ["", "Left out:", ""]
        lines += [f"- {system}: {why}." for system, why in result["skipped"].items()]
    if result["note"]:
        lines += ["", f"({result['note']})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--full", action="store_true", help="bigger counts")
    parser.add_argument("--tiny", action="store_true", help="a few seconds; checks the runner")
    parser.add_argument("--only", default=",".join(SYSTEMS), help="systems, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    profile = TINY if args.tiny else FULL if args.full else QUICK
    systems = tuple(s for s in args.only.split(",") if s)
    if unknown := [s for s in systems if s not in SYSTEMS]:
        parser.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")

    def log(line: str) -> None:
        if not args.quiet:
            print(f"[bench-peers] {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="ackbus-peers-") as tmp:
        result = measure(profile, Path(tmp), log, systems)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.out / f"{stamp}-{profile.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    markdown = table(result)
    path.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nwritten to {path} and {path.with_suffix('.md').name}")
    print(plot.written(path, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
