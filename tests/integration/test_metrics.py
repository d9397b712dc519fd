"""Prometheus metrics, scraped over HTTP from a real endpoint and a real hub process and
parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import pytest
from ackbus import Context, Reject
from ackbus.endpoint import Endpoint
from ackbus.metrics import serve
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
