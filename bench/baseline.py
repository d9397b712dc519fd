"""Raw pyzmq baselines, no ackbus: the practical limits ackbus is measured against.

(a) acked: a DEALER sends ``[id, payload]`` to a ROUTER in another OS process, which
    sends the 16-byte id back. Both sides run on asyncio, driven by a reader callback
    on the socket's file descriptor that drains with non-blocking receives (re-checking
    ``ZMQ_EVENTS`` after every operation: the descriptor is edge-triggered). One message
    per multipart: no coalescing. Measured pipelined (up to ``window`` in flight:
    msgs/s) and sequential (one at a time: round-trip p50/p99).
    With ``curve=True`` both sockets use CURVE (a fresh server keypair; no ZAP handler,
    so any client key is admitted): the floor under an encrypted ackbus row.
(b) one-way: the same sender fires ``n`` messages without waiting; the receiver says
    "done" after the last. msgs/s. The ceiling of any acknowledged scheme.

Everything runs on 127.0.0.1 TCP with ~100-byte payloads. Use it from a runner::

    from bench.baseline import run
    figures = run(reps=3)          # {"acked_pipelined": {...}, ...}

or alone: ``.venv/bin/python -m bench.baseline [--reps 3] [--full]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any, cast

import zmq

PAYLOAD = b"p" * 100
_STOP = b"stop"
_DONE = b"done"


# --------------------------------------------------------------------------- fd driving


class _Drained:
    """Calls ``on_batch(list_of_multiparts)`` whenever the socket has input, draining
    with NOBLOCK until EAGAIN, from the event loop's reader callback."""

    def __init__(
        self,
        sock: zmq.Socket[Any],
        on_batch: Callable[[list[list[bytes]]], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.sock = sock
        self.on_batch = on_batch
        self.loop = loop
        self.fd = cast(int, sock.getsockopt(zmq.FD))
        self.scheduled = False
        loop.add_reader(self.fd, self.wake)
        self.check()

    def wake(self) -> None:
        self.scheduled = False
        batch = []
        recv = self.sock.recv_multipart
        while True:
            try:
                batch.append(recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        if batch:
            self.on_batch(batch)
        self.check()

    def check(self) -> None:
        """After any send or recv: the edge may be consumed, so look at EVENTS."""
        if not self.scheduled and cast(int, self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self.scheduled = True
            self.loop.call_soon(self.wake)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)


# --------------------------------------------------------------------------- receiver process


def _receiver(mode: str, port_q: Any, hwm: int, server_secret: bytes | None) -> None:
    asyncio.run(_receive(mode, port_q, hwm, server_secret))


async def _receive(mode: str, port_q: Any, hwm: int, server_secret: bytes | None) -> None:
    loop = asyncio.get_running_loop()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    if server_secret is not None:
        sock.curve_server = True
        sock.curve_secretkey = server_secret
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = loop.create_future()
    state = {"count": 0, "target": 0}

    def on_batch(batch: list[list[bytes]]) -> None:
        send = sock.send_multipart
        for frames in batch:
            if frames[1] == _STOP:
                if not stop.done():
                    stop.set_result(None)
                return
            if mode == "acked":
                send([frames[0], frames[1]])
            elif len(frames) == 2:  # one-way run announces its size: [peer, n]
                state["count"], state["target"] = 0, int(frames[1])
            else:
                state["count"] += 1
                if state["count"] == state["target"]:
                    send([frames[0], _DONE])
        drained.check()

    drained = _Drained(sock, on_batch, loop)
    port_q.put(port)
    await stop
    drained.close()
    sock.close(0)
    ctx.term()


class _Peer:
    """The receiver process plus a connected DEALER on this side."""

    def __init__(self, mode: str, hwm: int = 100_000, curve: bool = False) -> None:
        mp = multiprocessing.get_context("spawn")
        q = mp.Queue()
        server_public, server_secret = zmq.curve_keypair() if curve else (b"", None)
        self.proc = mp.Process(target=_receiver, args=(mode, q, hwm, server_secret), daemon=True)
        self.proc.start()
        port = q.get(timeout=30)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        if curve:
            self.sock.curve_serverkey = server_public
            self.sock.curve_publickey, self.sock.curve_secretkey = zmq.curve_keypair()
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.send_multipart([_STOP], zmq.NOBLOCK)
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.sock.close(0)
        self.ctx.term()


# --------------------------------------------------------------------------- scenarios


async def _acked_pipelined(
    peer: _Peer, n: int, window: int, payload: bytes = PAYLOAD
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sock = peer.sock
    done = loop.create_future()
    st = {"sent": 0, "acked": 0}

    def send_more() -> None:
        send = sock.send_multipart
        while st["sent"] < n and st["sent"] - st["acked"] < window:
            send([st["sent"].to_bytes(16, "big"), payload])
            st["sent"] += 1

    def on_batch(batch: list[list[bytes]]) -> None:
        st["acked"] += len(batch)
        if st["acked"] >= n:
            if not done.done():
                done.set_result(None)
            return
        send_more()
        drained.check()

    drained = _Drained(sock, on_batch, loop)
    start = time.perf_counter()
    send_more()
    drained.check()
    async with asyncio.timeout(120):
        await done
    elapsed = time.perf_counter() - start
    drained.close()
    return {"msgs_per_s": n / elapsed, "n": n, "window": window}


async def _acked_sequential(peer: _Peer, n: int, payload: bytes = PAYLOAD) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sock = peer.sock
    waiter: list[asyncio.Future[None]] = []

    def on_batch(batch: list[list[bytes]]) -> None:
        if waiter and not waiter[0].done():
            waiter[0].set_result(None)

    drained = _Drained(sock, on_batch, loop)
    samples = []
    for i in range(n + n // 10):  # the first tenth warms up
        fut = loop.create_future()
        waiter[:] = [fut]
        t0 = time.perf_counter_ns()
        sock.send_multipart([i.to_bytes(16, "big"), payload])
        drained.check()
        async with asyncio.timeout(10):
            await fut
        if i >= n // 10:
            samples.append(time.perf_counter_ns() - t0)
    drained.close()
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "msgs_per_s": 1e9 / statistics.mean(samples),
        "n": n,
    }


async def _oneway(peer: _Peer, n: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sock = peer.sock
    done = loop.create_future()

    def on_batch(batch: list[list[bytes]]) -> None:
        if any(frames[0] == _DONE for frames in batch) and not done.done():
            done.set_result(None)

    drained = _Drained(sock, on_batch, loop)
    sock.send_multipart([str(n).encode()])
    start = time.perf_counter()
    send = sock.send_multipart
    i = 0
    while i < n:
        try:
            send([i.to_bytes(16, "big"), PAYLOAD], zmq.NOBLOCK)
            i += 1
        except zmq.Again:  # high-water mark: let the loop breathe, then go on
            drained.check()
            await asyncio.sleep(0)
        if i % 1000 == 0:
            await asyncio.sleep(0)  # fair to the loop, like a real sender
    drained.check()
    async with asyncio.timeout(120):
        await done
    elapsed = time.perf_counter() - start
    drained.close()
    return {"msgs_per_s": n / elapsed, "n": n}


def acked_pipelined(
    n: int = 50_000,
    window: int = 1000,
    size: int = 100,
    curve: bool = False,
    payload: bytes | None = None,
) -> dict[str, float]:
    """Baseline (a), pipelined: msgs/s with up to ``window`` unacked in flight, payloads
    of ``size`` bytes (``payload`` if given), over CURVE with ``curve``."""
    peer = _Peer("acked", curve=curve)
    try:
        return asyncio.run(_acked_pipelined(peer, n, window, payload or b"p" * size))
    finally:
        peer.close()


def acked_sequential(n: int = 3_000, size: int = 100) -> dict[str, float]:
    """Baseline (a), sequential: one message at a time, payloads of ``size`` bytes;
    p50/p99 round trip in µs."""
    peer = _Peer("acked")
    try:
        return asyncio.run(_acked_sequential(peer, n, b"p" * size))
    finally:
        peer.close()


def oneway(n: int = 100_000) -> dict[str, float]:
    """Baseline (b): fire-and-forget msgs/s, timed until the receiver has them all."""
    peer = _Peer("oneway")
    try:
        return asyncio.run(_oneway(peer, n))
    finally:
        peer.close()


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": len(runs)}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if key in ("n", "window"):
            out[key] = values[0]
        else:
            out[key] = statistics.median(values)
            out[key + "_min"] = min(values)
            out[key + "_max"] = max(values)
    return out


def run(reps: int = 3, full: bool = False) -> dict[str, dict[str, Any]]:
    """Every baseline, each the median of ``reps`` runs (with min and max)."""
    scale = 4 if full else 1
    scenarios: dict[str, Callable[[], dict[str, float]]] = {
        "acked_pipelined": lambda: acked_pipelined(50_000 * scale),
        "acked_sequential": lambda: acked_sequential(3_000 * scale),
        "oneway": lambda: oneway(100_000 * scale),
    }
    return {name: _summary([fn() for _ in range(reps)]) for name, fn in scenarios.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    figures = run(args.reps, args.full)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"raw pyzmq baselines, 127.0.0.1, {len(PAYLOAD)}-byte payloads, median of {args.reps}")
    for name, fig in figures.items():
        rate = f"{fig['msgs_per_s']:>9,.0f} msgs/s  (min {fig['msgs_per_s_min']:,.0f}, "
        rate += f"max {fig['msgs_per_s_max']:,.0f})"
        extra = ""
        if "p50_us" in fig:
            extra = f"  p50 {fig['p50_us']:.0f} µs  p99 {fig['p99_us']:.0f} µs"
        print(f"  {name:<18}{rate}{extra}")


if __name__ == "__main__":
    main()
