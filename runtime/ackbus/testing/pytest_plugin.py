"""ackbus's pytest plugin: fixtures for testing services built on ackbus (docs/testing.md).

Installed with ackbus (the ``pytest11`` entry point ``ackbus``), so a project's tests use
the fixtures without a conftest line. The async fixtures need pytest-asyncio
(``pip install 'ackbus[testing]'``).

In memory (one process, no sockets; :class:`~ackbus.testing.TestBus`):

- ``ackbus_bus``: a started bus (hub and faults), closed after the test. Its seed is
  ``@pytest.mark.ackbus(seed=N)``, else ``--ackbus-seed N``, else 0; the marker's
  ``heartbeat=`` sets the bus's heartbeat.
- ``ackbus_faults``: that bus's :class:`~ackbus.testing.Faults`.
- ``ackbus_endpoint``: ``await ackbus_endpoint("table", Table(), **options)``, a started
  endpoint of that service on the bus, with those handlers.
- ``ackbus_client``: ``await ackbus_client(TableClient)``, a generated client on a new
  started endpoint (``service=`` names it, default ``"client"``; options as above).

With real processes:

- ``ackbus_hub``: ``ackbus hub`` run as a process on a free loopback port; its address.
- ``ackbus_service``: ``ackbus_service("table_service:app", env=..., app_dir=...)`` runs
  ``ackbus run`` as a process connected to ``ackbus_hub`` and returns once it is ready
  (a :class:`ServiceProcess`: ``stop(signal)`` sends a signal and waits for the exit).

Every process is killed and reaped at the test's end.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:  # imported by the fixtures: a test run that uses none loads no ackbus
    from .._types import Handler
    from ..endpoint import Endpoint
    from . import Faults, TestBus

if TYPE_CHECKING:
    from pytest_asyncio import fixture as _async_fixture
else:
    try:
        from pytest_asyncio import fixture as _async_fixture
    except ImportError:  # pragma: no cover - the async fixtures then fail, unawaited
        _async_fixture = pytest.fixture

__all__ = [
    "ServiceProcess",
    "ackbus_bus",
    "ackbus_client",
    "ackbus_endpoint",
    "ackbus_faults",
    "ackbus_hub",
    "ackbus_seed",
    "ackbus_service",
]

C = TypeVar("C")

EndpointFactory = Callable[..., Awaitable["Endpoint"]]
ClientFactory = Callable[..., Awaitable[Any]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ackbus")
    group.addoption(
        "--ackbus-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the ackbus_bus fixture's faults (default 0; a marker's seed wins)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ackbus(seed=N, heartbeat=S): the ackbus_bus fixture's seed and heartbeat",
    )


def _marker(request: pytest.FixtureRequest, name: str) -> Any:
    marker = request.node.get_closest_marker("ackbus")
    return marker.kwargs.get(name) if marker is not None else None


@pytest.fixture
def ackbus_seed(request: pytest.FixtureRequest) -> int:
    """The seed of ``ackbus_bus``: the marker's, else ``--ackbus-seed``, else 0."""
    seed = _marker(request, "seed")
    if seed is None:
        seed = request.config.getoption("--ackbus-seed")
    return int(seed or 0)


@_async_fixture
async def ackbus_bus(request: pytest.FixtureRequest, ackbus_seed: int) -> AsyncIterator[TestBus]:
    """A started :class:`~ackbus.testing.TestBus`, closed after the test."""
    from . import TestBus

    heartbeat = _marker(request, "heartbeat")
    bus = TestBus(seed=ackbus_seed, heartbeat=0.2 if heartbeat is None else heartbeat)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
def ackbus_faults(ackbus_bus: TestBus) -> Faults:
    """The faults of ``ackbus_bus`` (all off until the test sets them)."""
    return ackbus_bus.faults


@pytest.fixture
def ackbus_endpoint(ackbus_bus: TestBus) -> EndpointFactory:
    """``await ackbus_endpoint(service, *handlers, **options)``: a started endpoint on
    ``ackbus_bus`` with ``handlers`` registered (options as for ``Endpoint``); a handler
    is a generated handler object, or a callable taking the endpoint and returning one
    (a handler that sends: ``ackbus_endpoint("table", Table)``)."""

    from .._types import Handler

    async def make(
        service: str, *handlers: Handler | Callable[[Endpoint], Handler], **options: Any
    ) -> Endpoint:
        ep = ackbus_bus.endpoint(service, **options)
        for handler in handlers:
            ep.register(handler if isinstance(handler, Handler) else handler(ep))
        await ackbus_bus.start()
        return ep

    return make


@pytest.fixture
def ackbus_client(ackbus_endpoint: EndpointFactory) -> ClientFactory:
    """``await ackbus_client(TableClient, service="client", **options)``: a generated
    client on a new started endpoint of ``ackbus_bus``."""

    async def make(client: Callable[[Endpoint], C], service: str = "client", **options: Any) -> C:
        return client(await ackbus_endpoint(service, **options))

    return make


# ---------------------------------------------------------------------- processes


class ServiceProcess:
    """A process started by ``ackbus_hub`` or ``ackbus_service``."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], ready: bytes, timeout: float
    ) -> None:
        self.argv = list(argv)
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by kill())
        """Its standard error (a file: a pipe nobody reads would fill and block it)."""
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        self.ready_line = self._wait_for(ready, timeout)

    def _wait_for(self, ready: bytes, timeout: float) -> str:
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                self.kill(close=False)
                errors = self.errors()
                self.stderr.close()
                what = " ".join(self.argv)
                raise RuntimeError(f"{what} not ready in {timeout} s: {errors}")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                line = stdout.readline()
                if ready in line:
                    return line.decode().strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def errors(self) -> str:
        """What it wrote to standard error so far."""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, str]:
        """Send ``sig`` and wait up to ``timeout`` s for the exit: its status and the
        rest of its standard output (SIGKILL and AssertionError if it does not exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            what = " ".join(self.argv)
            raise AssertionError(f"{what} did not exit {timeout} s after {sig}") from None
        return self.proc.returncode, out.decode()

    def kill(self, *, close: bool = True) -> None:
        """SIGKILL (if still running) and reap (``close``: and close its outputs)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if close:
            self.stderr.close()


@pytest.fixture
def ackbus_hub() -> Iterator[str]:
    """``ackbus hub`` as a process on a free port of 127.0.0.1 (heartbeat 0.25 s): its
    address. Killed and reaped after the test."""
    hub = ServiceProcess(
        [
            sys.executable,
            "-m",
            "ackbus.cli",
            "hub",
            "--bind",
            "tcp://127.0.0.1:0",
            "--heartbeat",
            "0.25",
        ],
        dict(os.environ),
        b"listening on",
        30.0,
    )
    try:
        found = re.search(r"listening on (tcp://\S+)", hub.ready_line)
        assert found is not None, hub.ready_line
        yield found.group(1)
    finally:
        hub.kill()


def _environment(config: pytest.Config, extra: dict[str, str] | None) -> dict[str, str]:
    """A child's environment: this one, the ini's ``pythonpath`` folders first on its
    PYTHONPATH (so it imports what the tests import), and ``extra``."""
    env = dict(os.environ)
    paths = [str(Path(p)) for p in config.getini("pythonpath")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return {**env, **(extra or {})}


@pytest.fixture
def ackbus_service(
    request: pytest.FixtureRequest, ackbus_hub: str
) -> Iterator[Callable[..., ServiceProcess]]:
    """``ackbus_service(target, *flags, env=None, app_dir=None, timeout=30)``: ``ackbus
    run TARGET --hub <ackbus_hub> FLAGS`` as a process (``python -m ackbus.run``, or
    ``command=("ackbus.cli", "run")``; ``env`` added to the environment, and the ini
    file's ``pythonpath`` folders put on its PYTHONPATH), once it printed its ready
    line. Each is killed and reaped after the
    test, unless stopped before."""
    started: list[ServiceProcess] = []

    def start(
        target: str,
        *flags: str,
        env: dict[str, str] | None = None,
        app_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        command: Sequence[str] = ("ackbus.run",),
    ) -> ServiceProcess:
        argv = [sys.executable, "-m", *command, target, "--hub", ackbus_hub, *flags]
        if app_dir is not None:
            argv += ["--app-dir", str(Path(app_dir))]
        proc = ServiceProcess(argv, _environment(request.config, env), b" ready on ", timeout)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()
