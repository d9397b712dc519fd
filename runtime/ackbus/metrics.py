"""Prometheus metrics of endpoints and hubs (``pip install 'ackbus[metrics]'``).

The collectors read an endpoint's or a hub's own counters (``ep.stats``, ``hub.stats``)
when Prometheus scrapes them, so the message path pays nothing for them::

    from ackbus.metrics import serve

    server = serve(9464, ep)          # http://127.0.0.1:9464/metrics
    ...
    server.close()

``ackbus hub --metrics-port N`` does the same for a standalone hub. Every sample carries
the ``service`` and ``instance`` labels of the endpoint (``hub`` and ``instance`` for a
hub). Counters only grow while the endpoint or hub lives; a restart starts them again
at zero, which Prometheus' ``rate()`` handles.

Exported (``ackbus_`` prefix): for an endpoint, messages ``sent``, ``transmits`` (attempts
on the wire), ``retries``, ``acked``, ``failed`` by ``reason``, ``received``, ``handled``,
``handler_errors``, ``duplicates`` (suppressed), ``loop_stalls`` and
``loop_stalled_seconds`` (the event loop held by a blocking handler), ``refused`` (bad
input) by ``code``, and
the gauges ``pending`` (sent, not settled) and ``dead_letters`` (failed reports held in
memory); for a hub (``ackbus_hub_``), ``routed``, ``no_route``, ``deferred`` (retries
answered retry-later during the grace period), ``acks_forwarded``, ``registrations``,
``dead_peers``, ``stalled`` (silent peers kept registered because their connection was
up), ``refused`` by ``code``, ``unauthenticated`` (keys refused in the CURVE handshake),
``key_limit`` (HELLOs refused: their key had ``max_instances_per_key`` instances),
``out_of_descriptors`` (failed accepts: the process was out of file descriptors),
``schema_drift`` (live peers disagreeing on a message type's schema fingerprint),
and the gauges ``instances`` per ``service`` and ``stalled_instances``.

Histograms and what the message path must count come from
:class:`PrometheusMiddleware` (:mod:`ackbus.middleware`), which ``Endpoint(...,
metrics=PORT)`` adds and serves; ``serve(port, ep)`` exports them with the counters
when the endpoint has one. It records ``ackbus_handler_seconds`` (handler runs, by
``type`` and ``outcome``: ``ok``, ``rejected``, ``error``) and ``ackbus_ack_seconds``
(first send to ack, by ``type``), and the endpoint's collector adds
``ackbus_window_waits`` (sends that waited for window room), the gauges
``ackbus_window_waiting`` (sends waiting now, by ``destination``) and ``ackbus_in_flight``
(sent, not settled, by ``type``). A hub's collector switches on its per-type count:
``ackbus_hub_routed_by_type`` (by ``type``).
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._types import Context, DeliveryReport
from .core.hub_protocol import HubStats
from .errors import Reject
from .middleware import HandleNext, Middleware

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .hub import Hub

__all__ = [
    "BUCKETS",
    "EndpointCollector",
    "HubCollector",
    "MetricsServer",
    "PrometheusMiddleware",
    "collector",
    "serve",
]

BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (seconds) of the histograms' buckets: from 100 µs (an ack on one host)
to 30 s (a handler's or a retried message's)."""

_ENDPOINT = ["service", "instance"]
_HUB = ["hub", "instance"]


def _counter(
    name: str, doc: str, names: list[str], labels: list[str], value: float
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=names)
    family.add_metric(labels, value)
    return family


def _by(
    name: str, doc: str, names: list[str], labels: list[str], key: str, counts: Counter[str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[*names, key])
    for value, n in sorted(counts.items()):
        family.add_metric([*labels, value], n)
    return family


class EndpointCollector(Collector):
    """An endpoint's counters, read at each scrape."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        ep = self.endpoint
        s = ep.stats
        names, labels = _ENDPOINT, [ep.identity.service, ep.identity.instance]
        for name, doc, value in (
            ("ackbus_sent", "Messages accepted by send, publish and request.", s.sent),
            (
                "ackbus_transmits",
                "Attempts put on the wire (first sends and retries).",
                s.transmits,
            ),
            ("ackbus_retries", "Attempts after the first.", s.retries),
            ("ackbus_acked", "Messages acknowledged.", s.acked),
            ("ackbus_received", "Messages received.", s.received),
            ("ackbus_handled", "Handler runs that returned.", s.handled),
            ("ackbus_handler_errors", "Handler runs that raised.", s.handler_errors),
            ("ackbus_duplicates", "Duplicates answered without running the handler.", s.duplicates),
            (
                "ackbus_loop_stalls",
                "Times the event loop was held past its threshold.",
                s.loop_stalls,
            ),
            (
                "ackbus_loop_stalled_seconds",
                "Seconds the event loop was held, in all.",
                s.loop_stalled_s,
            ),
        ):
            yield _counter(name, doc, names, labels, value)
        yield _by("ackbus_failed", "Messages failed, by reason.", names, labels, "reason", s.failed)
        yield _by("ackbus_refused", "Bad input refused, by code.", names, labels, "code", s.refused)
        pending = GaugeMetricFamily("ackbus_pending", "Messages sent, not settled.", labels=names)
        pending.add_metric(labels, ep.pending)
        yield pending
        dead = GaugeMetricFamily(
            "ackbus_dead_letters", "Failed reports held in memory.", labels=names
        )
        dead.add_metric(labels, len(ep.dead_letters))
        yield dead
        yield _counter(
            "ackbus_window_waits",
            "Sends that waited for room in their destination's window.",
            names,
            labels,
            ep.window_waits,
        )
        waiting = GaugeMetricFamily(
            "ackbus_window_waiting",
            "Sends waiting for window room now, by destination.",
            labels=[*names, "destination"],
        )
        for destination, n in sorted(ep.window_waiting().items()):
            waiting.add_metric([*labels, destination], n)
        yield waiting
        flight = GaugeMetricFamily(
            "ackbus_in_flight", "Messages sent, not settled, by type.", labels=[*names, "type"]
        )
        for msg_type, n in sorted(ep.in_flight_by_type().items()):
            flight.add_metric([*labels, msg_type], n)
        yield flight
        for mw in ep.middleware:
            if isinstance(mw, PrometheusMiddleware):
                yield from mw.collect()


class HubCollector(Collector):
    """A hub's counters and registered instances, read at each scrape."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        hub.count_types()

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        s = hub.stats
        names, labels = _HUB, [hub.identity.service, hub.identity.instance]
        for name, doc, value in (
            ("ackbus_hub_routed", "Items forwarded (an event once per service).", s.routed),
            ("ackbus_hub_no_route", "Commands no live instance could take.", s.no_route),
            ("ackbus_hub_deferred", "Retries deferred during the grace period.", s.deferred),
            ("ackbus_hub_acks_forwarded", "Acks passed on to their senders.", s.acks_forwarded),
            ("ackbus_hub_registrations", "HELLOs accepted.", s.registered),
            ("ackbus_hub_dead_peers", "Peers forgotten after missed heartbeats.", s.dead_peers),
            ("ackbus_hub_unauthenticated", "Keys refused in the handshake.", s.unauthenticated),
            (
                "ackbus_hub_key_limit",
                "HELLOs refused: their key had max_instances_per_key instances.",
                s.key_limit,
            ),
            (
                "ackbus_hub_out_of_descriptors",
                "Failed accepts (retried at once): out of file descriptors.",
                s.out_of_descriptors,
            ),
            (
                "ackbus_hub_schema_drift",
                "Live peers found disagreeing on a type's schema fingerprint (per pair).",
                s.schema_drift,
            ),
            (
                "ackbus_hub_stalled",
                "Silent peers kept registered because their connection was up.",
                s.stalled,
            ),
        ):
            yield _counter(name, doc, names, labels, value)
        yield _by("ackbus_hub_refused", "Refusals sent, by code.", names, labels, "code", s.refused)
        yield _by(
            "ackbus_hub_routed_by_type",
            "Items forwarded (an event once per service), by type.",
            names,
            labels,
            "type",
            hub.routed_by_type or Counter(),
        )
        instances = GaugeMetricFamily(
            "ackbus_hub_instances", "Registered instances, by service.", labels=[*names, "service"]
        )
        per_service = Counter(i.identity.service for i in hub.routing.instances())
        for service, n in sorted(per_service.items()):
            instances.add_metric([*labels, service], n)
        yield instances
        stalled = GaugeMetricFamily(
            "ackbus_hub_stalled_instances", "Instances silent now, connection up.", labels=names
        )
        stalled.add_metric(labels, len(hub.stalled_peers()))
        yield stalled


def collector(source: Endpoint | Hub) -> Collector:
    """The collector for an endpoint or a hub."""
    if isinstance(source.stats, HubStats):  # narrows the union: only a hub has HubStats
        return HubCollector(source)
    return EndpointCollector(source)


_clock = time.perf_counter
_bucket = bisect.bisect_left


class _Histogram:
    """One histogram's buckets per message type, written on the endpoint's loop thread
    only (no lock: a float increment), read by a scrape from its own thread."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.series: dict[str, list[float]] = {}
        """Type -> [count per bucket (the last: above every bound)..., sum]."""

    def observe(self, key: str, value: float) -> None:
        row = self.series.get(key) or self.row(key)
        row[_bucket(self.bounds, value)] += 1
        row[-1] += value

    def row(self, key: str) -> list[float]:
        """The row of ``key``, made empty the first time."""
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0.0] * (len(self.bounds) + 2)
        return row

    def add_to(self, family: HistogramMetricFamily, labels: list[str], *extra: str) -> None:
        """Add a series per type to ``family``: ``labels``, the type, then ``extra``."""
        for key, row in sorted(list(self.series.items())):
            row = list(row)  # one copy: the loop thread may add to it meanwhile
            cumulative, buckets = 0.0, []
            for bound, n in zip([*self.bounds, float("inf")], row[:-1], strict=True):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            family.add_metric([*labels, key, *extra], buckets, row[-1])


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class PrometheusMiddleware(Middleware):
    """Histograms of one endpoint's handler runs and of its messages' send-to-ack
    latency, by message type (module docstring). ``Endpoint(..., metrics=PORT)`` adds
    one; give one yourself (``middleware=[PrometheusMiddleware()]``) to choose its
    place in the chain or its ``buckets``, and ``serve(port, ep)`` exports it. One
    endpoint each."""

    def __init__(self, buckets: Sequence[float] = BUCKETS) -> None:
        self.handled = _Histogram(buckets)
        """Handler runs that returned, by type."""
        self.rejected = _Histogram(buckets)
        """Handler runs that raised Reject."""
        self.errors = _Histogram(buckets)
        """Handler runs that raised anything else (RetryLater included)."""
        self.ack_seconds = _Histogram(buckets)
        """Acked messages only (failures are ``ackbus_failed``)."""
        self._endpoint: Endpoint | None = None

    def attach(self, endpoint: Endpoint) -> None:
        if self._endpoint is not None:
            raise ValueError(
                f"this PrometheusMiddleware already records {self._endpoint.identity}: "
                "give each endpoint its own"
            )
        self._endpoint = endpoint

    def on_acked(self, reports: Sequence[DeliveryReport]) -> None:
        # A batch of acks is mostly of one type: its row is looked up once, and the
        # observation is inlined (this runs once per acked message).
        hist = self.ack_seconds
        bounds = hist.bounds
        last_type: str | None = None
        row: list[float] = []
        for r in reports:
            sent, acked = r.first_sent_at, r.acked_at
            if sent is None or acked is None:
                continue
            if r.message_type != last_type:
                last_type = r.message_type
                row = hist.row(last_type)
            seconds = acked - sent
            row[_bucket(bounds, seconds)] += 1
            row[-1] += seconds

    async def on_handle(self, msg: Any, ctx: Context, call_next: HandleNext) -> Any:
        started = _clock()
        try:
            result = await call_next(msg, ctx)
        except Reject:
            self.rejected.observe(ctx.message_type, _clock() - started)
            raise
        except asyncio.CancelledError:  # the endpoint closing: not a run that ended
            raise
        except BaseException:
            self.errors.observe(ctx.message_type, _clock() - started)
            raise
        self.handled.observe(ctx.message_type, _clock() - started)
        return result

    def collect(self) -> Iterator[Metric]:
        """The histograms, as the endpoint's collector exports them."""
        ep = self._endpoint
        if ep is None:
            return
        names, labels = _ENDPOINT, [ep.identity.service, ep.identity.instance]
        handler = HistogramMetricFamily(
            "ackbus_handler_seconds",
            "Handler runs, by type and outcome (ok, rejected, error).",
            labels=[*names, "type", "outcome"],
        )
        self.handled.add_to(handler, labels, "ok")
        self.rejected.add_to(handler, labels, "rejected")
        self.errors.add_to(handler, labels, "error")
        yield handler
        ack = HistogramMetricFamily(
            "ackbus_ack_seconds",
            "First send to ack of acked messages, by type.",
            labels=[*names, "type"],
        )
        self.ack_seconds.add_to(ack, labels)
        yield ack


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP server (a daemon thread); :meth:`close` stops it."""

    registry: CollectorRegistry
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(port: int, *sources: Endpoint | Hub, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the metrics of ``sources`` on ``http://addr:port/metrics`` (port 0: any free
    port, see :attr:`MetricsServer.port`), from a thread of its own. It binds 127.0.0.1
    unless told otherwise."""
    registry = CollectorRegistry()
    for source in sources:
        registry.register(collector(source))
    server, thread = start_http_server(port, addr, registry=registry)
    return MetricsServer(registry, server.server_port, server, thread)
