"""Ordering keys end to end, through an embedded hub (in memory and over TCP): a key's
messages are handled in send order, one at a time, on one instance; a retry holds back
its own key only; a poison message fails and its key moves on."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from ackbus import Context, DeliveryReport, Reject
from ackbus.endpoint import Endpoint
from helpers import FAST, HEARTBEAT, running_hub, settle
from poker import table_pb2

KEYED = FAST.with_(ordering_key="table_id", retry_rejected=True, deadline=10.0)


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_each_keys_messages_run_in_send_order_one_at_a_time(
    transport: str, tmp_path: Path
) -> None:
    ran: dict[str, list[int]] = defaultdict(list)
    where: dict[str, set[str]] = defaultdict(set)
    running: set[str] = set()
    overlaps: list[str] = []
    failed_once: set[tuple[str, int]] = set()
    rng = random.Random(5)

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def on_start(msg: table_pb2.StartHand, ctx: Context) -> None:
            key = msg.table_id
            if key in running:
                overlaps.append(key)
            running.add(key)
            try:
                await asyncio.sleep(rng.random() * 0.004)
                if msg.seats % 7 == 3 and (key, msg.seats) not in failed_once:
                    failed_once.add((key, msg.seats))
                    raise ValueError("transient: the next attempt works")  # a retry
                ran[key].append(msg.seats)
                where[key].add(name)
            finally:
                running.discard(key)

        return on_start

    async with running_hub(transport, tmp_path) as bus:

        def ep(service: str, **kw: object) -> Endpoint:
            return Endpoint(service, bus.address, backend=bus.backend, heartbeat=HEARTBEAT, **kw)  # type: ignore[arg-type]

        async with ep("table", instance="1") as t1, ep("table", instance="2") as t2:
            t1.register_handler(table_pb2.StartHand, handler("1"))
            t2.register_handler(table_pb2.StartHand, handler("2"))
            async with ep("dealer", window=16) as dealer:
                await asyncio.sleep(0.1)  # both instances said HELLO
                reports: list[DeliveryReport] = []
                for seq in range(40):
                    for k in range(10):
                        msg = table_pb2.StartHand(table_id=f"t{k}", seats=seq)
                        reports.append(await dealer.send(msg, wait_ack=False, policy=KEYED))
                await settle(reports, 30)
    assert all(reports), [str(r.error) for r in reports if not r][:3]
    assert overlaps == []
    for k in range(10):
        assert ran[f"t{k}"] == list(range(40)), f"t{k}"
        assert len(where[f"t{k}"]) == 1  # one instance per key
    assert len({next(iter(w)) for w in where.values()}) == 2  # keys spread over both


Handler = Callable[[table_pb2.StartHand, Context], Coroutine[Any, Any, None]]


async def send_all(
    on_start: Handler,
    messages: list[tuple[table_pb2.StartHand, dict[str, Any]]],
    timeout: float = 10,
) -> tuple[list[DeliveryReport], Endpoint, Endpoint]:
    """A table endpoint running ``on_start``, a dealer sending ``messages`` (each with
    its send options) without waiting, through an in-memory hub: the settled reports."""
    async with (
        running_hub("memory") as bus,
        Endpoint("table", bus.address, backend=bus.backend, heartbeat=HEARTBEAT) as table,
        Endpoint("dealer", bus.address, backend=bus.backend, heartbeat=HEARTBEAT) as dealer,
    ):
        table.register_handler(table_pb2.StartHand, on_start)
        await asyncio.sleep(0.05)
        reports = [await dealer.send(m, wait_ack=False, **kw) for m, kw in messages]
        await settle(reports, timeout)
    return reports, table, dealer


async def test_a_poison_message_fails_and_its_key_moves_on() -> None:
    ran: list[tuple[str, int]] = []

    async def on_start(msg: table_pb2.StartHand, ctx: Context) -> None:
        if msg.seats == 1 and msg.table_id == "t0":
            raise Reject("poison", permanent=False)  # fails every attempt
        ran.append((msg.table_id, msg.seats))

    policy = KEYED.with_(max_attempts=3)
    sends = [
        (table_pb2.StartHand(table_id=f"t{k}", seats=seq), {"policy": policy})
        for seq in range(4)
        for k in range(2)
    ]
    reports, table, dealer = await send_all(on_start, sends)
    failed = [r for r in reports if not r]
    assert len(failed) == 1
    assert failed[0].attempts >= 3
    assert [s for k, s in ran if k == "t0"] == [0, 2, 3]
    assert [s for k, s in ran if k == "t1"] == [0, 1, 2, 3]
    assert len(table.dead_letters) == 0
    assert len(dealer.dead_letters) == 1


async def test_an_explicit_key_orders_messages_of_a_policy_without_one() -> None:
    ran: list[int] = []

    async def on_start(msg: table_pb2.StartHand, ctx: Context) -> None:
        await asyncio.sleep(0.001 * (5 - msg.seats % 5))  # later ones would finish first
        ran.append(msg.seats)

    sends = [
        (table_pb2.StartHand(table_id="t", seats=n), {"policy": FAST, "key": 9}) for n in range(20)
    ]
    reports, _, _ = await send_all(on_start, sends)
    assert all(reports)
    assert ran == list(range(20))


async def test_ten_thousand_keys_flow_at_once() -> None:
    """Keys are independent: 10,000 keys, two messages each, pipelined through the
    default window: every one acked, each key's two in order, many keys in flight."""
    ran: dict[str, list[int]] = defaultdict(list)
    in_flight_peak = 0
    running = 0

    async def on_start(msg: table_pb2.StartHand, ctx: Context) -> None:
        nonlocal running, in_flight_peak
        running += 1
        in_flight_peak = max(in_flight_peak, running)
        await asyncio.sleep(0)  # suspends: handlers of many keys overlap
        running -= 1
        ran[msg.table_id].append(msg.seats)

    policy = FAST.with_(ordering_key="table_id", deadline=60.0, ack_timeout=5.0)
    sends = [
        (table_pb2.StartHand(table_id=f"t{k}", seats=seq), {"policy": policy})
        for seq in range(2)
        for k in range(10_000)
    ]
    reports, _, _ = await send_all(on_start, sends, timeout=60)
    assert all(reports)
    assert len(ran) == 10_000
    assert all(seqs == [0, 1] for seqs in ran.values())
    assert in_flight_peak > 100
