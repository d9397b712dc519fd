"""Prometheus metrics, scraped over HTTP from a real endpoint and a real hub process and
parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import pytest
from ackbus import Context, Reject
from ackbus.endpoint import Endpoint
from ackbus.metrics import PrometheusMiddleware, serve
from helpers import FAST
from poker import table_pb2
from proc_harness import Procs, free_port
from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_an_endpoints_counters_are_scraped_as_they_grow(hub: str) -> None:
    async def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        if msg.table_id == "closed":
            raise Reject("table is closed")

    rx = Endpoint("table", hub, policy=FAST, instance="t1")
    rx.register_handler(table_pb2.StartHand, handle)
    async with rx, Endpoint("dealer", hub, policy=FAST, instance="d1") as tx:
        server = serve(0, tx, rx)
        try:
            for i in range(5):
                assert await tx.send(table_pb2.StartHand(table_id=f"t{i}"))
            assert not await tx.send(table_pb2.StartHand(table_id="closed"))
            got = await asyncio.to_thread(scrape, server.port)
        finally:
            server.close()
    dealer = (("instance", "d1"), ("service", "dealer"))
    table = (("instance", "t1"), ("service", "table"))
    assert got[("ackbus_sent_total", dealer)] == 6
    assert got[("ackbus_acked_total", dealer)] == 5
    assert got[("ackbus_failed_total", tuple(sorted((*dealer, ("reason", "rejected")))))] == 1
    assert got[("ackbus_pending", dealer)] == 0
    assert got[("ackbus_dead_letters", dealer)] == 1
    assert got[("ackbus_handled_total", table)] == 5
    assert got[("ackbus_handler_errors_total", table)] == 1
    assert got[("ackbus_received_total", table)] == 6
    assert ("ackbus_loop_stalls_total", table) in got  # the watchdog's counts
    assert ("ackbus_loop_stalled_seconds_total", table) in got


def histogram(
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **want: str
) -> tuple[list[tuple[float, float]], float, float]:
    """One histogram series of a scrape: its buckets (bound, cumulative count) in order,
    its _count and its _sum."""
    buckets, count, total = [], None, None
    for (sample, labels), value in got.items():
        found = dict(labels)
        if any(found.get(k) != v for k, v in want.items()):
            continue
        if sample == f"{name}_bucket":
            buckets.append((float(found["le"]), value))
        elif sample == f"{name}_count":
            count = value
        elif sample == f"{name}_sum":
            total = value
    assert count is not None, f"no {name} series with {want}"
    assert total is not None
    return sorted(buckets), count, total


async def test_histograms_window_waits_and_in_flight_are_served_by_the_endpoint(
    hub: str,
) -> None:
    release = asyncio.Event()

    async def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        if msg.table_id == "closed":
            raise Reject("table is closed")
        if msg.table_id == "wait":
            await release.wait()

    policy = FAST.with_(ack_timeout=2.0, deadline=10.0, max_attempts=1)
    rx = Endpoint("table", hub, policy=policy, instance="t1", metrics=0)
    rx.register_handler(table_pb2.StartHand, handle)
    async with rx, Endpoint("dealer", hub, policy=policy, instance="d1", metrics=0, window=1) as tx:
        assert rx.metrics_port
        assert tx.metrics_port
        for i in range(5):
            assert await tx.send(table_pb2.StartHand(table_id=f"t{i}"))
        assert not await tx.send(table_pb2.StartHand(table_id="closed"))
        # One held by its handler fills the window of one; a second waits for room.
        held = await tx.send(table_pb2.StartHand(table_id="wait"), wait_ack=False)
        waiting = asyncio.ensure_future(tx.send(table_pb2.StartHand(table_id="t5")))
        while not tx.window_waiting():  # noqa: ASYNC110 - the send's line is polled
            await asyncio.sleep(0.01)
        during = await asyncio.to_thread(scrape, tx.metrics_port)
        release.set()
        assert await asyncio.wait_for(held.wait(), 5)
        assert await asyncio.wait_for(waiting, 5)
        rx_got = await asyncio.to_thread(scrape, rx.metrics_port)
        tx_got = await asyncio.to_thread(scrape, tx.metrics_port)
    dealer = {"service": "dealer", "instance": "d1"}
    in_flight = dict(dealer, type="poker.StartHand")
    assert during[("ackbus_in_flight", tuple(sorted(in_flight.items())))] == 1
    waiting_now = {
        dict(labels)["destination"]: v
        for (name, labels), v in during.items()
        if name == "ackbus_window_waiting" and ("service", "dealer") in labels
    }
    assert waiting_now == {"poker.Table/StartHand": 1}  # the rpc it names (the hub routes by)
    assert tx_got[("ackbus_window_waits_total", tuple(sorted(dealer.items())))] >= 1
    assert tx_got.get(("ackbus_in_flight", tuple(sorted(in_flight.items()))), 0) == 0
    assert tx_got[("ackbus_sent_total", tuple(sorted(dealer.items())))] == 8  # counters too
    # send-to-ack: the 7 acked (not the rejected one), by type
    buckets, count, total = histogram(tx_got, "ackbus_ack_seconds", **in_flight)
    assert count == 7
    assert total > 0
    assert buckets[-1] == (float("inf"), 7)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)  # cumulative
    table = {"service": "table", "instance": "t1", "type": "poker.StartHand"}
    _, ok, _ = histogram(rx_got, "ackbus_handler_seconds", outcome="ok", **table)
    _, rejected, _ = histogram(rx_got, "ackbus_handler_seconds", outcome="rejected", **table)
    assert (ok, rejected) == (7, 1)


async def test_a_handler_error_is_its_own_outcome(hub: str) -> None:
    async def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        raise RuntimeError("boom")

    rx = Endpoint("table", hub, policy=FAST, instance="t1", metrics=0)
    rx.register_handler(table_pb2.StartHand, handle)
    async with rx, Endpoint("dealer", hub, policy=FAST) as tx:
        assert not await tx.send(table_pb2.StartHand(table_id="t"))
        got = await asyncio.to_thread(scrape, rx.metrics_port)
    _, errors, _ = histogram(got, "ackbus_handler_seconds", outcome="error", service="table")
    assert errors == 1  # an exception is answered as a failure (not retried)


def test_one_prometheus_middleware_records_one_endpoint() -> None:
    mw = PrometheusMiddleware()
    Endpoint("a", "tcp://127.0.0.1:1", middleware=[mw])
    with pytest.raises(ValueError, match="give each endpoint its own"):
        Endpoint("b", "tcp://127.0.0.1:1", middleware=[mw])


@pytest.mark.slow
async def test_ackbus_hub_serves_its_metrics(procs: Procs) -> None:
    port, metrics_port = free_port(), free_port()
    procs.start(
        "-m",
        "ackbus.hub",
        "--bind",
        f"tcp://127.0.0.1:{port}",
        "--metrics-port",
        str(metrics_port),
        ready=b"metrics on http://127.0.0.1",
    )
    address = f"tcp://127.0.0.1:{port}"

    async def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        return None

    rx = Endpoint("table", address, policy=FAST)
    rx.register_handler(table_pb2.StartHand, handle)
    async with rx, Endpoint("dealer", address, policy=FAST) as tx:
        for i in range(3):
            assert await tx.send(table_pb2.StartHand(table_id=f"t{i}"))
        assert not await tx.send(table_pb2.GetTableState(), timeout=0.5)  # nobody: no-route
        got: dict[Any, float] = await asyncio.to_thread(scrape, metrics_port)
    samples = {name: v for (name, labels), v in got.items() if ("hub", "hub") in labels}
    assert samples["ackbus_hub_routed_total"] >= 3
    assert samples["ackbus_hub_no_route_total"] >= 1
    assert samples["ackbus_hub_registrations_total"] >= 2
    assert "ackbus_hub_stalled_total" in samples
    assert samples["ackbus_hub_stalled_instances"] == 0
    instances = {
        dict(labels)["service"]: v for (n, labels), v in got.items() if n == "ackbus_hub_instances"
    }
    assert instances == {"dealer": 1, "table": 1}
    by_type = {
        dict(labels)["type"]: v
        for (n, labels), v in got.items()
        if n == "ackbus_hub_routed_by_type_total"
    }
    assert by_type["poker.StartHand"] == 3
