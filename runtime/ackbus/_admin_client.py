"""The client side of ``ackbus status`` and ``ackbus tail``: a DEALER socket of its own
to a hub (CURVE with the same key files as an endpoint's), ADMIN requests and their
replies (the hub side is ``_admin``), and how each is printed.

Status prints as a table: with rich (``pip install 'ackbus[cli]'``) when standard output
is a terminal, as plain text otherwise (or with ``--plain``); ``--json`` prints the hub's
JSON as it came.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Generator
from typing import Any, TextIO

import zmq

from . import wire_pb2
from .errors import AckbusError, RemoteProtocolError, WaitTimeout
from .transport._keys import client_keys
from .wire import (
    Command,
    Limits,
    decode_admin_reply,
    decode_command,
    decode_refusal,
    encode_admin_request,
)

__all__ = ["AdminClient", "render_status", "traffic_line"]

_LIMITS = Limits(max_control_bytes=256 * 1024 * 1024)
"""A status names every instance: a hub with 10,000 of them answers some 3 MB, more than
a control frame's usual limit (1 MiB). The client asked for it, and reads it whole."""


class AdminClient:
    """One connection to a hub for an operator's requests. Use as a context manager."""

    def __init__(
        self,
        hub: str,
        *,
        keys: str | os.PathLike[str] | None = None,
        hub_key: str | os.PathLike[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.hub = hub
        self.timeout = timeout
        curve = client_keys(keys, hub_key)  # a missing or bad key file fails here
        self.curve = curve is not None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        self._sock.linger = 0
        if curve is not None:
            pair, server = curve
            self._sock.curve_publickey = pair.public
            self._sock.curve_secretkey = pair.secret
            self._sock.curve_serverkey = server
        try:
            self._sock.connect(hub)
        except zmq.ZMQError as exc:
            self.close()
            raise AckbusError(f"cannot connect to {hub!r}: {exc}") from None

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, req: wire_pb2.AdminRequest) -> None:
        self._sock.send_multipart(encode_admin_request(req))

    def ask(self, req: wire_pb2.AdminRequest) -> wire_pb2.AdminReply:
        """Send ``req``, return the hub's reply; :class:`WaitTimeout` after ``timeout``
        seconds, :class:`RemoteProtocolError` if the hub refused it."""
        self.send(req)
        reply = self.receive(self.timeout)
        if reply is None:
            raise WaitTimeout(self._silence())
        return reply

    def receive(self, timeout: float) -> wire_pb2.AdminReply | None:
        """The next reply within ``timeout`` seconds (None: none came)."""
        if not self._sock.poll(int(timeout * 1000)):
            return None
        frames = self._sock.recv_multipart()
        cmd = decode_command(frames)
        if cmd is Command.REFUSAL:
            raise decode_refusal(frames)
        if cmd is not Command.ADMIN_REPLY:
            raise RemoteProtocolError(f"the hub answered {cmd.name}, not ADMIN_REPLY")
        return decode_admin_reply(frames, _LIMITS)

    def _silence(self) -> str:
        keys = (
            "the hub may have refused this key in the handshake (is its .key in the hub's "
            "clients/?), or --hub-key is not this hub's key"
            if self.curve
            else "if the hub runs with keys, give --keys and --hub-key (or ACKBUS_KEYS, "
            "ACKBUS_HUB_KEY)"
        )
        return (
            f"no answer from {self.hub} within {self.timeout:g} s: is `ackbus hub --bind "
            f"{self.hub}` running and reachable? {keys}"
        )

    def tail(
        self, types: list[str], services: list[str], *, lease: float = 5.0
    ) -> Generator[wire_pb2.AdminReply]:
        """Replies of a tail, renewed every third of ``lease``, until the caller stops;
        an empty one at least every 0.25 s."""
        req = wire_pb2.AdminRequest(
            kind=wire_pb2.AdminRequest.TAIL,
            types=types,
            services=services,
            lease_ms=int(lease * 1000),
        )
        yield self.ask(req)  # the first answer says the hub tails for us
        renew = time.monotonic() + lease / 3
        try:
            while True:
                now = time.monotonic()
                if now >= renew:
                    self.send(req)
                    renew = now + lease / 3
                reply = self.receive(min(max(renew - now, 0.01), 0.25))
                # an empty reply when none came: the caller's clock runs on
                yield reply if reply is not None else wire_pb2.AdminReply()
        finally:
            if not self._sock.closed:  # else the lease ends it
                self.send(wire_pb2.AdminRequest(kind=wire_pb2.AdminRequest.UNTAIL))


# ---------------------------------------------------------------------- printing


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:g}/s"


def _handles(inst: dict[str, Any]) -> str:
    names = [*inst["commands"], *(f"{e} (event)" for e in inst["events"])]
    if len(names) > 3:
        return ", ".join(names[:3]) + f", +{len(names) - 3}"
    return ", ".join(names) or "-"


def _rows(status: dict[str, Any]) -> list[list[str]]:
    rows = []
    for svc in status["services"]:
        for inst in svc["instances"]:
            rows.append(
                [
                    svc["name"],
                    inst["instance"],
                    inst["agent"] or "?",
                    str(inst["protocol"] or "?"),
                    inst["key"] or "-",
                    f"{inst['in_flight']}/{inst['max_concurrency']}",
                    _rate(inst["acked_per_s"]),
                    _ago(inst["up_s"]) + (" stalled" if inst["stalled"] else ""),
                    _handles(inst),
                ]
            )
    return rows


_HEAD = ["SERVICE", "INSTANCE", "SOFTWARE", "PROTO", "KEY", "IN FLIGHT", "ACKS", "UP", "HANDLES"]


def _summary(status: dict[str, Any]) -> list[str]:
    hub = status["hub"]
    t, r = status["totals"], status["rates"]
    keys = f"CURVE, {hub['enrolled']} keys enrolled" if hub["keys"] else "no keys: this host only"
    if hub["access"]:
        keys += f", access file {hub['access']}"
    services = len(status["services"])
    instances = sum(len(s["instances"]) for s in status["services"])
    return [
        f"hub {hub['name']}/{hub['instance']}  ackbus {hub['version']}  up "
        f"{_ago(hub['uptime_s'])}  {' '.join(hub['addresses'])}; {keys}",
        f"{services} service{'s' if services != 1 else ''}, {instances} instance"
        f"{'s' if instances != 1 else ''}; routed {t['routed']} ({_rate(r['routed'])}), "
        f"acks {t['acks_forwarded']} ({_rate(r['acks_forwarded'])}), no route "
        f"{t['no_route']} ({_rate(r['no_route'])}), held {t['held']}, refused "
        f"{t['refused']} ({_rate(r['refused'])}); rates over the last {r['window_s']:g} s",
    ]


def _refusals(status: dict[str, Any]) -> list[str]:
    ref = status["refused"]
    codes = ", ".join(f"{c} {n}" for c, n in ref["by_code"].items()) or "none"
    lines = [
        f"refused: {codes}; keys refused in the handshake {ref['unauthenticated']}; "
        f"messages unauthorized {ref['unauthorized']}"
    ]
    for r in ref["recent"]:
        when = datetime.datetime.fromtimestamp(r["at"]).strftime("%H:%M:%S")
        lines.append(f"  {when}  peer {r['peer'][:12]}  {r['code']}  {r['reason']}")
    drift = status.get("schema_drift")  # absent from hubs that predate it
    if drift and drift["noticed"]:
        now = ", ".join(f"{t} ({n} fingerprints)" for t, n in drift["types_now"].items())
        lines.append(
            f"schema drift: {drift['noticed']} disagreement"
            f"{'s' if drift['noticed'] != 1 else ''} noticed; live now: {now or 'none'}"
        )
    return lines


def render_status(status: dict[str, Any], out: TextIO, *, rich: bool | None = None) -> None:
    """Print a status as a table: rich when ``rich`` (default: ``out`` is a terminal and
    rich is installed), else plain text in aligned columns."""
    if rich is None:
        rich = out.isatty() and _has_rich()
    if rich:
        _render_rich(status, out)
        return
    for line in _summary(status):
        print(line, file=out)
    print(file=out)
    rows = _rows(status)
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_HEAD)]
        for row in [_HEAD, *rows]:
            print(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out
            )
    else:
        print("no instances registered", file=out)
    print(file=out)
    for line in _refusals(status):
        print(line, file=out)


def _has_rich() -> bool:
    import importlib.util

    return importlib.util.find_spec("rich") is not None


def _render_rich(status: dict[str, Any], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out)
    head, counts = _summary(status)
    console.print(f"[bold]{head}[/bold]", highlight=False)
    console.print(counts, highlight=False)
    table = Table(*_HEAD, header_style="bold", expand=False)
    for row in _rows(status):
        style = "yellow" if row[7].endswith("stalled") else None
        table.add_row(*row, style=style)
    console.print(table)
    for line in _refusals(status):
        console.print(line, highlight=False, markup=False)


def traffic_line(rec: wire_pb2.Traffic) -> str:
    """One line of ``ackbus tail``."""
    when = datetime.datetime.fromtimestamp(rec.at).strftime("%H:%M:%S.%f")[:-3]
    latency = f"{rec.latency_s * 1000:.1f} ms" if rec.latency_s else "-"
    receiver = rec.receiver or "-"
    attempt = f" attempt {rec.attempt}" if rec.attempt > 1 else ""
    detail = f"  {rec.detail}" if rec.detail else ""
    return (
        f"{when}  {rec.message_id.hex()[:12]}  {rec.type}  {rec.sender} -> {receiver}  "
        f"{rec.outcome}  {latency}{attempt}{detail}"
    )


def print_status_json(status: dict[str, Any], out: TextIO = sys.stdout) -> None:
    print(json.dumps(status, indent=2, sort_keys=True), file=out)
