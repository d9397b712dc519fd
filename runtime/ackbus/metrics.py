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
and the gauges ``instances`` per ``service`` and ``stalled_instances``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .endpoint import Endpoint
from .hub import Hub

__all__ = ["EndpointCollector", "HubCollector", "MetricsServer", "collector", "serve"]

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


class HubCollector(Collector):
    """A hub's counters and registered instances, read at each scrape."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

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
                "ackbus_hub_stalled",
                "Silent peers kept registered because their connection was up.",
                s.stalled,
            ),
        ):
            yield _counter(name, doc, names, labels, value)
        yield _by("ackbus_hub_refused", "Refusals sent, by code.", names, labels, "code", s.refused)
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
    return HubCollector(source) if isinstance(source, Hub) else EndpointCollector(source)


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
