"""The hub's status page on its metrics port: ``/status`` (one HTML page, no external
assets, refreshed every second from ``/status.json``), ``/status.json`` (what ``ackbus
status --json`` prints) and ``/metrics`` (Prometheus, when prometheus-client is
installed). Binds 127.0.0.1 unless told otherwise: the page answers whoever reaches the
port, keys or not (docs/operations.md).

The server runs in threads of its own; each ``/status.json`` is computed on the hub's
event loop (``call_soon_threadsafe``), never by reading the hub's state from another
thread.
"""

from __future__ import annotations

import concurrent.futures
import json
import socketserver
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from .hub import Hub

__all__ = ["PAGE", "StatusServer", "serve"]

WsgiApp = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no line per request
        pass


@dataclass
class StatusServer:
    """A running status page (and ``/metrics``); :meth:`close` stops it."""

    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(port: int, hub: Hub, *, addr: str = "127.0.0.1") -> StatusServer:
    """Serve ``hub``'s status page and metrics on ``http://addr:port/`` (port 0: any free
    one, see :attr:`StatusServer.port`), from threads of its own."""
    metrics = _metrics_app(hub)
    loop = hub.loop

    def status_json() -> bytes:
        done: concurrent.futures.Future[bytes] = concurrent.futures.Future()

        def compute() -> None:
            try:
                done.set_result(json.dumps(hub.status()).encode())
            except BaseException as exc:  # handed to the HTTP thread, which answers 500
                done.set_exception(exc)

        loop.call_soon_threadsafe(compute)
        return done.result(timeout=5)

    def app(environ: WSGIEnvironment, start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/", "/status", "/status/"):
            return _answer(start, "200 OK", "text/html; charset=utf-8", PAGE.encode())
        if path == "/status.json":
            try:
                body = status_json()
            except Exception as exc:
                text = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
                return _answer(start, "503 Service Unavailable", "application/json", text)
            return _answer(start, "200 OK", "application/json", body)
        if path == "/metrics" and metrics is not None:
            return metrics(environ, start)
        return _answer(start, "404 Not Found", "text/plain", b"not found: try /status\n")

    server = make_server(addr, port, app, server_class=_Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="ackbus-status", daemon=True)
    thread.start()
    return StatusServer(server.server_port, server, thread)


def _answer(start: StartResponse, status: str, kind: str, body: bytes) -> list[bytes]:
    start(
        status,
        [
            ("Content-Type", kind),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


def _metrics_app(hub: Hub) -> WsgiApp | None:
    """Prometheus' ``/metrics`` for ``hub``, or None without prometheus-client."""
    try:
        from prometheus_client import CollectorRegistry, make_wsgi_app
    except ImportError:
        return None
    from .metrics import collector

    registry = CollectorRegistry()
    registry.register(collector(hub))
    app: WsgiApp = make_wsgi_app(registry)
    return app


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ackbus hub</title>
<link rel="icon" href="data:,">
<style>
  :root { --fg: #1d2430; --muted: #5b6575; --line: #d9dee7; --bg: #f6f7f9; --ok: #1a7f37;
          --warn: #9a6700; --bad: #c62828; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
         color: var(--fg); background: var(--bg); }
  header { background: #1d2430; color: #fff; padding: 12px 20px; display: flex;
           gap: 18px; align-items: baseline; flex-wrap: wrap; }
  header h1 { font-size: 18px; margin: 0; }
  header span { color: #c9d1dd; }
  main { padding: 16px 20px; max-width: 1200px; }
  .cards { display: flex; gap: 10px; flex-wrap: wrap; margin-bottom: 16px; }
  .card { background: #fff; border: 1px solid var(--line); border-radius: 6px;
          padding: 8px 14px; min-width: 120px; }
  .card b { display: block; font-size: 20px; }
  .card small { color: var(--muted); }
  h2 { font-size: 15px; margin: 18px 0 6px; }
  table { border-collapse: collapse; width: 100%; background: #fff;
          border: 1px solid var(--line); }
  th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
           vertical-align: top; }
  th { background: #eef1f5; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  tr.service td { background: #f9fafb; font-weight: 600; }
  tr.stalled td { color: var(--warn); }
  code { font: 12px ui-monospace, monospace; }
  #state { margin-left: auto; }
  #state.error { color: #ffb4b4; }
  .empty { color: var(--muted); padding: 8px; }
</style>
</head>
<body>
<header>
  <h1 id="hub">ackbus hub</h1>
  <span id="meta"></span>
  <span id="state">loading</span>
</header>
<main>
  <div class="cards" id="cards"></div>
  <h2>Services</h2>
  <table id="services">
    <thead><tr><th>Service / instance</th><th>Software</th><th>Proto</th><th>Key</th>
      <th>In flight</th><th>Acks/s</th><th>Up</th><th>Handles</th></tr></thead>
    <tbody></tbody>
  </table>
  <h2>Refused</h2>
  <div id="refused-summary"></div>
  <table id="refused">
    <thead><tr><th>When</th><th>Peer</th><th>Code</th><th>Reason</th></tr></thead>
    <tbody></tbody>
  </table>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const kid of kids) e.append(kid);
  return e;
}
function ago(s) {
  s = Math.floor(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}
const rate = (v) => v === null || v === undefined ? "-" : v + "/s";
function card(label, value, sub) {
  return el("div", {class: "card", "data-name": label}, el("small", {}, label),
            el("b", {}, String(value)), el("small", {}, sub || ""));
}
function render(s) {
  const h = s.hub;
  $("hub").textContent = "hub " + h.name + "/" + h.instance.slice(0, 8);
  $("meta").textContent = "ackbus " + h.version + " \\u00b7 up " + ago(h.uptime_s) +
    " \\u00b7 " + h.addresses.join(" ") + " \\u00b7 " +
    (h.keys ? "CURVE, " + h.enrolled + " keys" : "no keys");
  const t = s.totals, r = s.rates;
  const instances = s.services.reduce((n, x) => n + x.instances.length, 0);
  $("cards").replaceChildren(
    card("services", s.services.length, instances + " instances"),
    card("routed", t.routed, rate(r.routed)),
    card("acks", t.acks_forwarded, rate(r.acks_forwarded)),
    card("no route", t.no_route, rate(r.no_route)),
    card("held", t.held, "overflow " + t.overflow),
    card("refused", t.refused, rate(r.refused)));
  const rows = [];
  for (const svc of s.services) {
    rows.push(el("tr", {class: "service", "data-service": svc.name},
      el("td", {colspan: 4}, svc.name + " (" + svc.instances.length + ")"),
      el("td", {class: "num"}, String(svc.in_flight)),
      el("td", {class: "num"}, rate(svc.acked_per_s)), el("td", {colspan: 2}, "")));
    for (const i of svc.instances) {
      const handles = i.commands.concat(i.events.map((e) => e + " (event)"));
      rows.push(el("tr", {class: "instance" + (i.stalled ? " stalled" : ""),
                          "data-instance": svc.name + "/" + i.instance},
        el("td", {}, el("code", {}, i.instance)), el("td", {}, i.agent || "?"),
        el("td", {class: "num"}, String(i.protocol || "?")), el("td", {}, i.key || "-"),
        el("td", {class: "num"}, i.in_flight + "/" + i.max_concurrency),
        el("td", {class: "num"}, rate(i.acked_per_s)),
        el("td", {}, ago(i.up_s) + (i.stalled ? " stalled" : "")),
        el("td", {}, el("code", {}, handles.join(", ") || "-"))));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", {colspan: 8, class: "empty"},
                                               "no instances registered")));
  $("services").tBodies[0].replaceChildren(...rows);
  const ref = s.refused;
  const codes = Object.entries(ref.by_code).map(([c, n]) => c + " " + n).join(", ");
  $("refused-summary").textContent = "by code: " + (codes || "none") +
    "; keys refused in the handshake: " + ref.unauthenticated +
    "; messages unauthorized: " + ref.unauthorized;
  $("refused").tBodies[0].replaceChildren(...ref.recent.map((x) => el("tr", {},
    el("td", {}, new Date(x.at * 1000).toLocaleTimeString()),
    el("td", {}, el("code", {}, x.peer.slice(0, 12))), el("td", {}, x.code),
    el("td", {}, x.reason))));
}
async function refresh() {
  try {
    const answer = await fetch("status.json", {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    render(await answer.json());
    $("state").textContent = "updated " + new Date().toLocaleTimeString();
    $("state").className = "";
  } catch (e) {
    $("state").textContent = "no answer from the hub: " + e.message;
    $("state").className = "error";
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
