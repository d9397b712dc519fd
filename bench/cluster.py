"""The processes of an ackbus benchmark: a hub, a receiver and reusable sender workers.

A :class:`Cluster` starts, as separate OS processes on 127.0.0.1:

* a hub: *standalone* (``python -m ackbus.hub``, what an operator runs) or *embedded*
  (a :class:`~ackbus.hub.Hub` inside the receiver's process, on the receiver's loop,
  which the receiver reaches at ``inmem://`` and the senders over TCP);
* receivers: one endpoint each (service ``sink`` by default) whose handler does
  nothing, so every figure is the cost of the bus alone; optionally with a store
  (``sqlite:///...``). A :class:`Setup` varies them: several subscriber services of one
  event type (the publisher waits for each, as a generated publisher does), a plain
  ``def`` handler run in the endpoint's worker pool (doing nothing, or sleeping as
  blocking code would), CURVE keys on every socket;
* ``senders`` worker processes, kept for the cluster's life and reused for every
  repetition and scenario, so process start-up and imports are never timed.

A scenario runs in two phases on every selected worker: *prepare* (connect, warm up)
and, once all are ready, *go*; each worker times its own part with the wall clock and
:meth:`Cluster.run` combines them (total messages / (last end - first start)).

Process figures (RSS, open file descriptors) are read from ``/proc`` by pid, so the
sender can sample its own and the receiver's and hub's at the same instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ackbus import Context, DeliveryReport, Kind, Policy
from ackbus.endpoint import Endpoint
from ackbus.hub import Hub
from ackbus.wire_pb2 import Bye

if TYPE_CHECKING:
    from .fleet import Fleet


POLICY = Policy(ack_timeout=5.0, deadline=120.0)
_WARMUP = 200
_LOCAL_HUB = "inmem://bench-hub"
"""Where the receiver reaches an embedded hub (its own process)."""
_TIMEOUT = 300.0
"""Seconds any one exchange with a worker may take before the run is abandoned."""


# --------------------------------------------------------------------------- /proc


def proc_figures(pid: int) -> dict[str, float]:
    """RSS (MiB) and open file descriptors of a live process (Linux ``/proc``)."""
    rss_kib = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
                break
    return {"rss_mib": rss_kib / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Setup:
    """What the receivers run and how everyone connects (the default: one ``sink``
    service with an ``async def`` handler that does nothing, plain TCP)."""

    services: tuple[str, ...] = ("sink",)
    """One receiver process per service."""
    events: bool = False
    """The message is an event every service subscribes to, declared as a subscriber in
    the publisher's policy (a generated publisher's case): a publish is done when each
    acked. Otherwise a command for the one service."""
    handler: str = "async"
    """``async`` (on the loop) or ``def`` (in the endpoint's worker pool)."""
    sleep_ms: float = 0.0
    """A ``def`` handler sleeps this long, as blocking code (a sync driver) would."""
    workers: int | None = None
    keys: Path | None = None
    """A folder made by :func:`make_keys`: the hub, receivers and senders use CURVE."""
    ordering_keys: int = 0
    """Pipelined sends carry ordering keys, message *i* key ``i % ordering_keys``: one
    message of a key in flight at a time (0: no keys)."""
    hubs: int = 1
    """Standalone hubs; every receiver and sender is given all of them."""
    idle: int = 0
    """Idle instances (:class:`bench.fleet.Fleet`) of 50 other services registered at the
    hubs, heartbeating: the scale rows compare 10 with 1,000."""
    metrics: bool = False
    """Prometheus metrics on every process: ``Endpoint(..., metrics=0)`` on the senders
    and receivers (counters and the histograms of ackbus.metrics.PrometheusMiddleware),
    ``--metrics-port 0`` on a standalone hub (its per-type count)."""

    def endpoint_options(self, name: str) -> dict[str, Any]:
        """What an endpoint named ``name`` is given besides its hub and policy."""
        return {**_key_args(self.keys, name), **({"metrics": 0} if self.metrics else {})}

    def policy(self) -> Policy:
        if not self.events:
            return POLICY
        return POLICY.with_(subscribers=tuple(_schema_service(s) for s in self.services))


def json_like(size: int) -> str:
    """``size`` characters of JSON-like text: records of a few fields with varying
    numbers and names, as an API's list response has them (about 6:1 with
    zstandard, where the rows' usual ``"p" * size`` compresses to nothing)."""
    parts = []
    total = i = 0
    while total < size:
        record = (
            f'{{"id":{i * 7919 % 100003},"name":"player-{i * 31 % 977}","seat":{i % 9},'
            f'"chips":{1000 + i * 37 % 5000},"state":"{("active", "folded", "all-in")[i % 3]}"}},'
        )
        parts.append(record)
        total += len(record)
        i += 1
    return "[" + "".join(parts)[: size - 2] + "]"


def make_keys(folder: Path, names: tuple[str, ...]) -> Path:
    """The hub's keypair and one per client name, laid out as ``ackbus hub --keys``
    expects (``folder/hub.key_secret``, ``folder/clients/NAME.key``)."""
    from ackbus.transport._keys import generate_keys

    generate_keys(folder, "hub")
    for name in names:
        generate_keys(folder / "private", name)
        public = folder / "private" / f"{name}.key"
        (folder / "clients").mkdir(mode=0o700, exist_ok=True)
        (folder / "clients" / public.name).write_bytes(public.read_bytes())
    return folder


def _key_args(keys: Path | None, name: str) -> dict[str, Any]:
    if keys is None:
        return {}
    return {"keys": keys / "private" / f"{name}.key_secret", "hub_key": keys / "hub.key"}


def _schema_service(service: str) -> str:
    return f"bench.{service}"


# --------------------------------------------------------------------------- receiver


def _receiver_main(
    conn: Connection, embedded_hub: str | None, store: str | None, service: str, setup: Setup
) -> None:
    asyncio.run(_receive(conn, embedded_hub, store, service, setup))


async def _receive(
    conn: Connection, embedded_hub: str | None, store: str | None, service: str, setup: Setup
) -> None:
    async def on_bye(msg: Bye, ctx: Context) -> None:
        return None

    pause = setup.sleep_ms / 1000

    def on_bye_blocking(msg: Bye, ctx: Context) -> None:
        if pause:
            time.sleep(pause)

    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        if embedded_hub is not None:
            # The senders connect over TCP; this process's own endpoint reaches its hub
            # in memory, as any service embedding a hub would (transport._default).
            hub = await stack.enter_async_context(Hub([embedded_hub, _LOCAL_HUB]))
            address, local = hub.addresses[0], _LOCAL_HUB
        else:
            address = local = conn.recv()
        ep = Endpoint(
            service,
            local,
            store=store,
            policy=POLICY,
            workers=setup.workers,
            **setup.endpoint_options(service),
        )
        kind = Kind.EVENT if setup.events else Kind.COMMAND
        implements = _schema_service(service) if setup.events else None
        if setup.handler == "def":
            ep.register_handler(Bye, on_bye_blocking, kind=kind, implements=implements)
        else:
            ep.register_handler(Bye, on_bye, kind=kind, implements=implements)
        await stack.enter_async_context(ep)
        conn.send(address)
        await loop.run_in_executor(None, conn.recv)  # until told to stop
        conn.send({"received": ep.stats.received, "handled": ep.stats.handled})


# --------------------------------------------------------------------------- sender


def _sender_main(conn: Connection) -> None:
    while (job := conn.recv()) is not None:
        try:
            result = asyncio.run(_sender_job(conn, job))
        except Exception as exc:  # reported to the runner, which raises it there
            result = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(result)


async def _sender_job(conn: Connection, job: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    setup: Setup = job["setup"]
    async with Endpoint(
        "source",
        job["address"],
        window=job["window"],
        policy=setup.policy().with_(compress_above=job.get("compress_above", 0)),
        store=job.get("store"),
        **setup.endpoint_options("source"),
    ) as ep:
        size = job["size"]
        msg = Bye(reason=json_like(size) if job.get("json") else "p" * size)
        send = ep.publish if setup.events else ep.send
        for _ in range(min(_WARMUP, job["n"])):
            await send(msg)
        conn.send("ready")
        await loop.run_in_executor(None, conn.recv)  # "go"
        if job["kind"] == "sequential":
            return await _sequential(ep, send, msg, job["n"])
        if setup.ordering_keys:
            send = _keyed(send, setup.ordering_keys)
        return await _pipelined(ep, send, msg, job["n"], job.get("checkpoints", ()), job["watch"])


_Send = Callable[..., Coroutine[Any, Any, DeliveryReport]]
"""``Endpoint.send`` or ``Endpoint.publish``."""


def _keyed(send: _Send, keys: int) -> _Send:
    """``send`` giving message *i* the ordering key ``i % keys``."""
    count = itertools.count()

    def keyed(msg: Bye, **options: Any) -> Coroutine[Any, Any, DeliveryReport]:
        return send(msg, key=next(count) % keys, **options)

    return keyed


async def _sequential(ep: Endpoint, send: _Send, msg: Bye, n: int) -> dict[str, Any]:
    rtts = []
    start = time.time()
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        report = await send(msg)
        rtts.append(clock() - t0)
        if not report:
            raise RuntimeError(f"sequential send failed: {report.error}")
    end = time.time()
    rtts.sort()
    return {
        "start": start,
        "end": end,
        "n": n,
        "p50_us": rtts[len(rtts) // 2] / 1000,
        "p99_us": rtts[int(len(rtts) * 0.99)] / 1000,
    }


async def _pipelined(
    ep: Endpoint,
    send: _Send,
    msg: Bye,
    n: int,
    checkpoints: tuple[int, ...],
    watch: dict[str, int],
) -> dict[str, Any]:
    """``n`` sends without waiting (the window holds up to ``window`` in flight), then
    wait until every one settled. No report is kept: a million of them would be the
    benchmark's own memory growth. At each checkpoint (a message count) sample the
    watched processes."""
    samples: dict[str, dict[str, dict[str, float]]] = {}
    marks = set(checkpoints)
    watch = {"sender": os.getpid(), **watch}
    start = time.time()
    last = None
    for i in range(1, n + 1):
        last = await send(msg, wait_ack=False)
        if i in marks:
            samples[str(i)] = {name: proc_figures(pid) for name, pid in watch.items()}
    if last is not None:
        await last.wait(_TIMEOUT)
    while ep.pending:  # noqa: ASYNC110 - the others' reports were not kept (see above)
        await asyncio.sleep(0.0005)
    end = time.time()
    failed = sum(ep.stats.failed.values())
    return {"start": start, "end": end, "n": n, "failed": failed, "samples": samples}


# --------------------------------------------------------------------------- cluster


class Cluster:
    """Hub, receiver and ``senders`` sender workers; close (or ``with``) tears all down."""

    def __init__(
        self,
        *,
        hub: str = "standalone",
        senders: int = 1,
        store: str | None = None,
        setup: Setup | None = None,
    ):
        if hub not in ("standalone", "embedded"):
            raise ValueError(f"hub must be standalone or embedded, not {hub!r}")
        self.setup = setup = setup or Setup()
        if hub == "embedded" and (setup.keys is not None or len(setup.services) > 1):
            raise ValueError("an embedded hub runs in the one receiver's process, without keys")
        mp = multiprocessing.get_context("spawn")
        self.hub_mode = hub
        self.hub_proc: subprocess.Popen[str] | None = None
        self.hub_procs: list[subprocess.Popen[str]] = []
        self.hub_addresses: list[str] = []
        self.workers: list[tuple[Any, Connection]] = []
        self.pids: dict[str, int] = {}
        self.receivers: list[tuple[Any, Connection]] = []
        self.fleet: Fleet | None = None
        try:
            if hub == "standalone":
                for _ in range(setup.hubs):
                    hub_proc, reached = _standalone_hub(setup.keys, setup.metrics)
                    self.hub_procs.append(hub_proc)
                    self.hub_addresses.append(reached)
                self.hub_proc = self.hub_procs[0]
                self.pids["hub"] = self.hub_proc.pid
                address: str | list[str] = (
                    self.hub_addresses if setup.hubs > 1 else self.hub_addresses[0]
                )
                if setup.idle:
                    from .fleet import Fleet  # it uses this module's helpers

                    self.fleet = Fleet(self.hub_addresses, setup.idle)
            embedded = "tcp://127.0.0.1:0" if hub == "embedded" else None
            for i, service in enumerate(setup.services):
                mine, theirs = mp.Pipe()
                proc = mp.Process(
                    target=_receiver_main,
                    args=(theirs, embedded, store, service, setup),
                    daemon=True,
                )
                proc.start()
                self.receivers.append((proc, mine))
                if hub == "standalone":
                    mine.send(address)
                reached = _recv(mine, proc)
                if i == 0:
                    assert proc.pid is not None
                    self.address = reached
                    self.pids["receiver"] = proc.pid
            for _ in range(senders):
                self.add_sender()
        except BaseException:
            self.close()
            raise

    def add_sender(self) -> None:
        mp = multiprocessing.get_context("spawn")
        mine, theirs = mp.Pipe()
        proc = mp.Process(target=_sender_main, args=(theirs,), daemon=True)
        proc.start()
        self.workers.append((proc, mine))

    def run(
        self,
        kind: str,
        n: int,
        *,
        senders: int = 1,
        window: int = 1000,
        size: int = 100,
        store: str | None = None,
        checkpoints: tuple[int, ...] = (),
        json: bool = False,
        compress_above: int = 0,
    ) -> dict[str, Any]:
        """One repetition on ``senders`` workers, ``n`` messages each (``kind``:
        ``pipelined`` or ``sequential``). Returns msgs/s over all of them, and the
        latency figures and process samples of the first."""
        while len(self.workers) < senders:
            self.add_sender()
        conns = [conn for _, conn in self.workers[:senders]]
        job = {
            "kind": kind,
            "address": self.address,
            "n": n,
            "window": window,
            "size": size,
            "json": json,
            "compress_above": compress_above,
            "store": store,
            "checkpoints": checkpoints,
            "watch": {k: v for k, v in self.pids.items()},
            "setup": self.setup,
        }
        for i, conn in enumerate(conns):
            conn.send({**job, "store": _numbered(store, i)})
        procs = [proc for proc, _ in self.workers[:senders]]
        for proc, conn in zip(procs, conns, strict=True):
            if (ready := _recv(conn, proc)) != "ready":
                raise RuntimeError(f"sender failed to start: {ready}")
        for conn in conns:
            conn.send("go")
        results = [_recv(conn, proc) for proc, conn in zip(procs, conns, strict=True)]
        for r in results:
            if "error" in r:
                raise RuntimeError(f"sender failed: {r['error']}")
        took = max(r["end"] for r in results) - min(r["start"] for r in results)
        first = results[0]
        out: dict[str, Any] = {"msgs_per_s": n * senders / took}
        for key in ("p50_us", "p99_us", "samples"):
            if key in first:
                out[key] = first[key]
        out["failed"] = sum(r.get("failed", 0) for r in results)
        return out

    def close(self) -> None:
        for proc, conn in self.workers:
            with contextlib.suppress(OSError):
                conn.send(None)
            _stop(proc)
        self.workers = []
        for proc, conn in self.receivers:
            with contextlib.suppress(OSError):
                conn.send("stop")
            _stop(proc)
        self.receivers = []
        if self.fleet is not None:
            self.fleet.close()
            self.fleet = None
        for hub_proc in self.hub_procs:
            _stop_hub(hub_proc)
        self.hub_procs = []

    def restart_hub(self) -> float:
        """Kill the (first) standalone hub with -9 and start it again on its address;
        when (wall clock) the new one listened."""
        assert self.hub_proc is not None
        self.hub_proc.kill()
        _stop_hub(self.hub_proc)
        proc, _ = _standalone_hub(self.setup.keys, self.setup.metrics, self.hub_addresses[0])
        self.hub_procs[0] = self.hub_proc = proc
        self.pids["hub"] = proc.pid
        return time.time()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _numbered(store: str | None, i: int) -> str | None:
    """Each sender gets a database of its own."""
    if store is None:
        return None
    head, sep, query = store.partition("?")
    return f"{head}.{i}{sep}{query}"


def _recv(conn: Connection, proc: Any, timeout: float = _TIMEOUT) -> Any:
    """The worker's next answer; an error if it died or stayed silent for ``timeout``."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.1):
        if not proc.is_alive():
            raise RuntimeError(f"benchmark worker {proc.pid} died (exit code {proc.exitcode})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from a benchmark worker within {timeout} s")
    return conn.recv()


def _stop(proc: Any) -> None:
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def _stop_hub(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def _standalone_hub(
    keys: Path | None = None, metrics: bool = False, bind: str = "tcp://127.0.0.1:0"
) -> tuple[subprocess.Popen[str], str]:
    """``python -m ackbus.hub`` on ``bind`` (a free port by default); its address from
    the line it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ackbus.hub", "--bind", bind]
        + (["--keys", str(keys)] if keys is not None else [])
        + (["--metrics-port", "0"] if metrics else []),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if " listening on " not in line:
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"the standalone hub did not start: {line!r}")
    return proc, line.rsplit(" listening on ", 1)[1].split()[0].rstrip(";")
