"""One shared contract, several transports: each test of ``test_contract.py`` runs over
the in-memory backend, real ZeroMQ sockets on TCP loopback and IPC, and either side of
a default-backend listener bound to both kinds of address."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from ackbus.transport import (
    Backend,
    DefaultBackend,
    Listener,
    MemoryBackend,
    OnReceive,
    OnUnroutable,
    TransportOptions,
    ZmqBackend,
)


@dataclass
class Kit:
    name: str
    backend: Backend
    address: Callable[[], str]
    """A fresh address for a listener to bind (may contain a port 0 or ``*``)."""


class Mixed(DefaultBackend):
    """The default backend, each listener also bound to an address of the other kind
    (``inmem://`` beside ZeroMQ, or the reverse): the contract must hold on either side
    of a listener that has both."""

    def __init__(self, extra: str) -> None:
        super().__init__(local=MemoryBackend())
        self.extra = extra

    def bind(
        self,
        addresses: str | list[str] | tuple[str, ...],
        *,
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None = None,
        options: TransportOptions = TransportOptions(),  # noqa: B008 (frozen)
    ) -> Listener:
        asked = [addresses] if isinstance(addresses, str) else list(addresses)
        return super().bind(
            [*asked, self.extra],
            on_receive=on_receive,
            on_unroutable=on_unroutable,
            options=options,
        )


@pytest.fixture(params=["memory", "tcp", "ipc", "mixed-inmem", "mixed-tcp"])
def kit(request: pytest.FixtureRequest) -> Iterator[Kit]:
    if request.param == "memory":
        yield Kit("memory", MemoryBackend(), lambda: "inmem://*")
    elif request.param == "mixed-inmem":  # the peers connect to the in-memory side
        yield Kit("mixed-inmem", Mixed("tcp://127.0.0.1:0"), lambda: "inmem://*")
    elif request.param == "mixed-tcp":  # the peers connect to the ZeroMQ side
        yield Kit("mixed-tcp", Mixed("inmem://*"), lambda: "tcp://127.0.0.1:0")
    elif request.param == "tcp":
        yield Kit("tcp", ZmqBackend(), lambda: "tcp://127.0.0.1:0")
    else:
        # ipc paths are limited to ~100 bytes: keep the directory short
        tmp = tempfile.mkdtemp(prefix="ackbus-", dir="/tmp")
        count = iter(range(1000))
        yield Kit("ipc", ZmqBackend(), lambda: f"ipc://{tmp}/s{next(count)}")
        shutil.rmtree(tmp, ignore_errors=True)
