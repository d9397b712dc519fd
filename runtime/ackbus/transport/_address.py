"""Why an address cannot be bound or connected to, and what to do about it.

libzmq reports a failed bind or connect as a bare errno ("Address already in use",
"Invalid argument"): it names neither the address nor what to change, and a service
with three addresses in its configuration cannot tell which one is wrong. Both
backends turn such a failure into one :class:`~ackbus.errors.AddressError` made here,
from the address, the operation and the errno: the reason in the system's words, and
a hint for that reason and that transport.

One mistake libzmq does not report at all: a TCP port above 65535 is taken modulo
65536, so ``tcp://127.0.0.1:70000`` binds port 4464. :func:`check` refuses it first.

:func:`exposed` tells whether a bind address can be reached from other hosts: a hub
refuses to listen on one without keys unless told it may (docs/security.md).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from typing import Literal

from ..errors import AddressError

__all__ = ["DNS", "Op", "address_error", "check", "exposed", "resolve"]

Op = Literal["bind", "connect"]

_FORMS = "tcp://HOST:PORT, ipc:///PATH or inproc://NAME"
"""The addresses ZeroMQ understands, as hints name them."""
_MAX_PORT = 65535


DNS = "dns://"
"""A hub address ``dns://NAME:PORT`` stands for ``tcp://ADDRESS:PORT`` for each IPv4
address ``NAME`` resolves to (several hubs behind one name)."""


async def resolve(addresses: list[str], timeout: float) -> list[str]:
    """``addresses`` with each ``dns://NAME:PORT`` replaced by one ``tcp://ADDRESS:PORT``
    per IPv4 address the name resolves to (the resolver's order, repeats dropped; the
    resolver is asked once, when the endpoint starts). :class:`AddressError` if a name
    does not resolve within ``timeout`` seconds or resolves to nothing."""
    out: list[str] = []
    loop = asyncio.get_running_loop()
    for address in addresses:
        if not address.startswith(DNS):
            out.append(address)
            continue
        host, port = _split_tcp(address[len(DNS) :])
        if not host or port is None or not port.isdigit() or int(port) > _MAX_PORT:
            raise AddressError(
                address,
                "not a name and a port",
                op="connect",
                hint="a dns:// hub address is dns://NAME:PORT, e.g. dns://hubs.internal:5555",
            )
        try:
            async with asyncio.timeout(timeout):
                found = await loop.getaddrinfo(
                    host, int(port), family=socket.AF_INET, type=socket.SOCK_STREAM
                )
        except (OSError, UnicodeError, TimeoutError) as exc:
            why = (
                f"no answer within {timeout} s"
                if isinstance(exc, TimeoutError)
                else getattr(exc, "strerror", None) or str(exc)
            )
            raise AddressError(
                address,
                f"{host} does not resolve ({why})",
                op="connect",
                hint="check the name, and the resolver (/etc/resolv.conf, /etc/hosts)",
            ) from None
        for info in found:
            url = f"tcp://{info[4][0]}:{port}"
            if url not in out:
                out.append(url)
    return out


def check(address: str, op: Op) -> None:
    """Raise :class:`AddressError` for what libzmq would accept but misread."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return
    port = _split_tcp(rest)[1]
    if port is not None and port.isdigit() and int(port) > _MAX_PORT:
        raise address_error(address, op, errno.EINVAL)


def exposed(address: str) -> bool:
    """Whether binding ``address`` listens beyond this host: any ``tcp://`` address but a
    loopback one (``127.0.0.0/8``, ``::1``, or a name that resolves only to those, like
    ``localhost``). A wildcard (``*``, ``0.0.0.0``), an interface name (``eth0``) or a
    name that does not resolve counts as exposed: when in doubt, it is. ``ipc://``,
    ``inproc://`` and ``inmem://`` never leave the host."""
    scheme, _, rest = address.partition("://")
    if scheme not in ("tcp", "ws", "wss", "tipc", "vmci", "udp", "pgm", "epgm", "norm"):
        return False
    if scheme != "tcp":
        return True
    host = _split_tcp(rest)[0].strip("[]")
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "*":
        return True
    try:
        found = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return True
    loopback = [
        ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback for info in found
    ]
    return not loopback or not all(loopback)


def address_error(
    address: str, op: Op, errnum: int, *, reason: str | None = None, forms: str = _FORMS
) -> AddressError:
    """The error for ``op`` on ``address`` failing with ``errnum``. ``reason``
    overrides the system's text for the errno; ``forms`` are the addresses the
    backend understands, for the hint."""
    text = reason if reason is not None else os.strerror(errnum)
    text = text[:1].lower() + text[1:]
    hint = _hint(address, op, errnum, forms)
    return AddressError(address, text, op=op, hint=hint, errno=errnum)


def _split_tcp(rest: str) -> tuple[str, str | None]:
    """Host and port of what follows ``tcp://`` (``[SOURCE;]HOST:PORT``); port None
    when there is no colon."""
    target = rest.rpartition(";")[2]
    host, colon, port = target.rpartition(":")
    if not colon or port.endswith("]"):  # no port, or a bare [IPv6] address
        return target, None
    return host, port


def _hint(address: str, op: Op, errnum: int, forms: str) -> str:
    scheme, sep, rest = address.partition("://")
    if not sep:
        return f"an address looks like {forms}"
    if errnum == errno.EPROTONOSUPPORT:
        return f"unknown transport {scheme!r}: use {forms}"
    if scheme == "tcp":
        return _tcp_hint(address, op, errnum, rest)
    if errnum == errno.EXDEV and scheme == "inmem":
        return (
            "an inmem:// address reaches only endpoints on its listener's event loop: "
            "between threads or loops use tcp://, ipc:// or inproc://"
        )
    if errnum == errno.EADDRINUSE:
        if scheme == "inmem":
            return "another listener of this backend has bound it: use another name, or inmem://*"
        return "another socket has bound it: close that one, or use another name"
    if errnum == errno.ENOENT and scheme == "ipc":
        folder = os.path.dirname(rest) or "."
        return f"the directory {folder} does not exist: create it, or use a path in one that does"
    if errnum == errno.ENAMETOOLONG:
        return "a Unix socket path holds about 100 bytes at most: use a shorter one (e.g. in /tmp)"
    if errnum == errno.EACCES:
        return "no permission to create the socket file there: use a directory you can write to"
    return f"an address looks like {forms}"


def _tcp_hint(address: str, op: Op, errnum: int, rest: str) -> str:
    host, port = _split_tcp(rest)
    if errnum == errno.EADDRINUSE:
        return (
            f"another process (or another socket in this one) is listening on {address}: "
            f"stop it, or bind another port (tcp://{host}:0 picks a free one)"
        )
    if errnum in (errno.ENODEV, errno.EADDRNOTAVAIL):
        return (
            f"{host!r} is not an address of this machine: bind 127.0.0.1 (this machine "
            "only), * (every interface) or one of its own addresses"
        )
    if errnum == errno.EACCES:
        return "ports below 1024 need privileges: use a port above 1023"
    if port is None or port == "":
        return "the port is missing: use tcp://HOST:PORT"
    if port.isdigit() and int(port) > _MAX_PORT:
        return f"port {port} is out of range: ports are 0-{_MAX_PORT}"
    if op == "connect" and (port in ("*", "0") or host == "*"):
        return "a connect needs a real host and port, not * or 0: use the address the hub bound"
    if not port.isdigit() and port != "*":
        return f"the port {port!r} is not a number: use tcp://HOST:PORT"
    return "use tcp://HOST:PORT (HOST an address, a name or *; PORT a number, 0 for any)"
