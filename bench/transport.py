"""The ackbus transport and wire layers alone, next to baseline (a) in the same run.

Same exchange as baseline (a): a sender keeps up to 1,000 messages in flight to a
receiver in another OS process that acknowledges each by id. Here through
``ackbus.transport`` (Link → Listener over 127.0.0.1 TCP) and ``ackbus.wire`` (items
encoded per message, coalesced into batches, acks as 16-byte ids): no hub, no endpoint,
no handler; and once more through a bare router process built on the same two layers
(the floor under a hub). It shows what these layers cost against raw pyzmq, and what
batching buys back.

``.venv/bin/python -m bench.transport`` prints figures; ``run()`` returns them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ackbus import wire
from ackbus.transport import Link, Listener, ZmqBackend
from ackbus.wire import Multipart

from . import baseline

PAYLOAD = baseline.PAYLOAD


def _receiver(port_q: Any) -> None:
    asyncio.run(_receive(port_q))


async def _receive(port_q: Any) -> None:
    stop = asyncio.get_running_loop().create_future()
    listener: Listener | None = None

    def on_receive(batch: list[Multipart]) -> None:
        assert listener is not None
        for frames in batch:
            peer = frames[0]
            if wire.decode_command(frames[1:]) is wire.Command.BYE:
                stop.set_result(None)
                return
            out = listener.outbox(peer)
            for item in wire.decode_messages(frames[1:]):
                out.ack(item.id, item.peer)

    listener = ZmqBackend().bind("tcp://127.0.0.1:0", on_receive=on_receive)
    port_q.put(listener.addresses[0])
    await stop
    listener.close()


async def _pipelined(address: str, n: int, window: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    st = {"sent": 0, "acked": 0}
    links: list[Link] = []

    def send_more() -> None:
        out = links[0].outbox
        sent = st["sent"]
        limit = min(n, st["acked"] + window)
        while sent < limit:
            out.message(wire.encode_message(sent.to_bytes(16, "big"), "bench.Msg", PAYLOAD))
            sent += 1
        st["sent"] = sent

    def on_receive(batch: list[Multipart]) -> None:
        for frames in batch:
            for group in wire.split_acks(frames):
                st["acked"] += len(group.ok_ids)
        if st["acked"] >= n:
            if not done.done():
                done.set_result(None)
            return
        send_more()

    link = ZmqBackend().connect(address, on_receive=on_receive)
    links.append(link)
    await link.wait_connected(10)
    start = time.perf_counter()
    send_more()
    async with asyncio.timeout(120):
        await done
    elapsed = time.perf_counter() - start
    link.outbox.control(wire.encode_bye("done"))
    link.flush()
    await asyncio.sleep(0.05)
    link.close()
    return {"msgs_per_s": n / elapsed, "n": n, "window": window}


async def _sequential(address: str, n: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None]] = []

    def on_receive(batch: list[Multipart]) -> None:
        if waiter and not waiter[0].done():
            waiter[0].set_result(None)

    link = ZmqBackend().connect(address, on_receive=on_receive)
    await link.wait_connected(10)
    samples = []
    for i in range(n + n // 10):  # the first tenth warms up
        fut = loop.create_future()
        waiter[:] = [fut]
        t0 = time.perf_counter_ns()
        link.outbox.message(wire.encode_message(i.to_bytes(16, "big"), "bench.Msg", PAYLOAD))
        async with asyncio.timeout(10):
            await fut
        if i >= n // 10:
            samples.append(time.perf_counter_ns() - t0)
    link.outbox.control(wire.encode_bye("done"))
    link.flush()
    await asyncio.sleep(0.05)
    link.close()
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "msgs_per_s": 1e9 / statistics.mean(samples),
        "n": n,
    }


def pipelined(n: int = 100_000, window: int = 1000, *, forwarded: bool = False) -> dict[str, float]:
    """Acked msgs/s through ackbus.transport + ackbus.wire, up to ``window`` in flight;
    ``forwarded``: through a bare router process in the middle."""
    return _with_receiver(lambda address: _pipelined(address, n, window), forwarded=forwarded)


def sequential(n: int = 3_000, *, forwarded: bool = False) -> dict[str, float]:
    """One message at a time through ackbus.transport + ackbus.wire: round trip µs."""
    return _with_receiver(lambda address: _sequential(address, n), forwarded=forwarded)


def _router(port_q: Any) -> None:
    asyncio.run(_route(port_q))


async def _route(port_q: Any) -> None:
    """A bare router on the transport: forwards every message to the one receiver (the
    peer that sent a HEARTBEAT) under the sender's origin token, and acks back to the
    origin. What a hub does minus its routing table, liveness and refusals."""
    listener: Listener | None = None
    dest: list[bytes] = []

    def on_receive(batch: list[Multipart]) -> None:
        assert listener is not None
        for frames in batch:
            peer, body = frames[0], frames[1:]
            cmd = wire.decode_command(body)
            if cmd is wire.Command.HEARTBEAT:
                dest[:] = [peer]
            elif cmd is wire.Command.MESSAGE and dest:
                out = listener.outbox(dest[0])
                for item in wire.decode_messages(body):
                    out.message(item.frame, peer)
            elif cmd is wire.Command.ACK:
                for group in wire.split_acks(body):
                    listener.outbox(group.peer).acks(group.ok_ids, b"receiver")

    listener = ZmqBackend().bind("tcp://127.0.0.1:0", on_receive=on_receive)
    port_q.put(listener.addresses[0])
    await asyncio.sleep(3600)


def _forwarded_receiver(address: str, ready: Any) -> None:
    asyncio.run(_forwarded_receive(address, ready))


async def _forwarded_receive(address: str, ready: Any) -> None:
    links: list[Link] = []

    def on_receive(batch: list[Multipart]) -> None:
        out = links[0].outbox
        for frames in batch:
            if wire.decode_command(frames) is wire.Command.MESSAGE:
                for item in wire.decode_messages(frames):
                    out.ack(item.id, item.peer)

    link = ZmqBackend().connect(address, on_receive=on_receive)
    links.append(link)
    await link.wait_connected(10)
    link.outbox.control(wire.encode_heartbeat())
    await asyncio.sleep(0.2)
    ready.set()
    await asyncio.sleep(3600)


def _with_receiver(
    scenario: Callable[[str], Coroutine[Any, Any, dict[str, float]]],
    *,
    forwarded: bool = False,
) -> dict[str, float]:
    """Run ``scenario(address)`` against a receiver process, directly or through a
    bare router process."""
    mp = multiprocessing.get_context("spawn")
    q = mp.Queue()
    procs = [mp.Process(target=_router if forwarded else _receiver, args=(q,), daemon=True)]
    procs[0].start()
    try:
        address = q.get(timeout=30)
        if forwarded:
            ready = mp.Event()
            procs.append(mp.Process(target=_forwarded_receiver, args=(address, ready), daemon=True))
            procs[1].start()
            if not ready.wait(30):
                raise RuntimeError("the receiver did not come up")
        return asyncio.run(scenario(address))
    finally:
        for proc in procs:
            if forwarded:
                proc.terminate()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def run(reps: int = 3) -> dict[str, dict[str, float]]:
    """Medians of ``reps`` runs: baseline (a) and the same through transport + wire."""

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    base = [baseline.acked_pipelined() for _ in range(reps)]
    ours = [pipelined() for _ in range(reps)]
    fwd = [pipelined(forwarded=True) for _ in range(reps)]
    base_seq = [baseline.acked_sequential() for _ in range(reps)]
    ours_seq = [sequential() for _ in range(reps)]
    fwd_seq = [sequential(forwarded=True) for _ in range(reps)]
    b, o, f = med(base, "msgs_per_s"), med(ours, "msgs_per_s"), med(fwd, "msgs_per_s")
    return {
        "baseline_a_pipelined": {"msgs_per_s": b},
        "transport_wire_pipelined": {"msgs_per_s": o, "ratio_to_baseline_a": o / b},
        "via_bare_router_pipelined": {"msgs_per_s": f, "ratio_to_baseline_a": f / b},
        "baseline_a_sequential": {
            "p50_us": med(base_seq, "p50_us"),
            "p99_us": med(base_seq, "p99_us"),
        },
        "transport_wire_sequential": {
            "p50_us": med(ours_seq, "p50_us"),
            "p99_us": med(ours_seq, "p99_us"),
        },
        "via_bare_router_sequential": {
            "p50_us": med(fwd_seq, "p50_us"),
            "p99_us": med(fwd_seq, "p99_us"),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"median of {args.reps}, 127.0.0.1 TCP, {len(PAYLOAD)}-byte payloads")
    for name, fig in run(args.reps).items():
        if "msgs_per_s" in fig:
            ratio = fig.get("ratio_to_baseline_a")
            extra = f"  ({ratio:.2f} x baseline a)" if ratio else ""
            print(f"  {name:<28}{fig['msgs_per_s']:>10,.0f} msgs/s{extra}")
        else:
            print(f"  {name:<28}p50 {fig['p50_us']:>6.0f} µs   p99 {fig['p99_us']:>6.0f} µs")


if __name__ == "__main__":
    main()
