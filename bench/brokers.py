"""Real broker servers for ``python -m bench.peers``: NATS with JetStream, Redis, RabbitMQ.

Each runs from its Debian package's binary as a child of the runner, in a folder of
the runner's temp folder, on a free port of 127.0.0.1, and is stopped when the
:class:`Servers` context ends; the machine's own services (``systemctl``, the
packages' default ports) are never used or touched. :func:`install` installs the
packages that are missing with ``apt-get`` when the runner is root, and otherwise says
in one sentence why a broker is left out; the runner goes on with the others.

* NATS: ``nats-server -js -sd FOLDER`` (JetStream's file store in the folder);
* Redis: ``redis-server`` with the append-only file on (``appendfsync everysec``: each
  write is in the file before its reply, fsync'd once a second), no snapshots;
* RabbitMQ: ``rabbitmq-server`` as a node of its own (name, ports, database, logs,
  Erlang cookie and ``epmd`` on a free port, all in its folder, no plugins), its
  schedulers told not to spin while idle (``+sbwt none``), as on a machine it shares.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PACKAGES = {"nats": "nats-server", "redis": "redis-server", "rabbitmq": "rabbitmq-server"}
"""Broker -> Debian package."""
_RABBIT = "/usr/lib/rabbitmq/bin/rabbitmq-server"
_START_TIMEOUT = 60.0


def _binary(broker: str) -> str | None:
    if broker == "rabbitmq":
        return _RABBIT if os.path.exists(_RABBIT) and shutil.which("epmd") else None
    return shutil.which(PACKAGES[broker])


def install(log: Callable[[str], None]) -> dict[str, str]:
    """Install the missing servers (``apt-get``, as root); ``{broker: why it cannot
    run}`` for those still missing."""
    missing = [b for b in PACKAGES if _binary(b) is None]
    if not missing:
        return {}
    packages = " ".join(PACKAGES[b] for b in missing)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = (
            f"{packages} not installed, and this runner installs Debian packages only as "
            f"root with apt-get: run `apt-get install -y {packages}` as root, then again"
        )
        return dict.fromkeys(missing, why)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", *(PACKAGES[b] for b in missing)]
    log(f"installing {packages} (apt-get)")
    if subprocess.run(command, env=env, capture_output=True).returncode != 0:
        log("apt-get install failed; apt-get update, then once more")
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return dict.fromkeys(missing, f"apt-get install -y {packages} failed: {last}")
    return {b: f"{PACKAGES[b]} installed but not found" for b in missing if _binary(b) is None}


def version(broker: str) -> str:
    """The installed package's version (``dpkg-query``), or ``?``."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", PACKAGES[broker]], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """One running broker: its client URL, its processes, its folder's log."""

    broker: str
    url: str
    log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        """SIGTERM to each process group (the last started first), SIGKILL after 20 s."""
        for proc in reversed(self.procs):
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(5)


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _spawn(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """In a session of its own, so that its children (RabbitMQ's) stop with it."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _wait_listening(server: Server, port: int) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        for proc in server.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{server.broker} exited ({proc.returncode}): {_tail(server)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"{server.broker} not listening after {_START_TIMEOUT:.0f} s: {_tail(server)}"
    )


def _tail(server: Server) -> str:
    lines = server.log.read_text(errors="replace").strip().splitlines()
    return " | ".join(lines[-3:]) or "(empty log)"


def start(broker: str, folder: Path) -> Server:
    """Start ``broker`` in ``folder`` (made here); returns once it accepts connections."""
    folder.mkdir(parents=True)
    port = free_port()
    log = folder / "server.log"
    if broker == "nats":
        server = Server(broker, f"nats://127.0.0.1:{port}", log)
        command = ["nats-server", "-a", "127.0.0.1", "-p", str(port)]
        server.procs.append(_spawn([*command, "-js", "-sd", str(folder / "js")], log))
    elif broker == "redis":
        server = Server(broker, f"redis://127.0.0.1:{port}", log)
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "dir": str(folder),
            "save": "",
            "appendonly": "yes",
            "appendfsync": "everysec",
            "daemonize": "no",
        }
        args = [x for k, v in options.items() for x in (f"--{k}", v)]
        server.procs.append(_spawn(["redis-server", *args], log))
    else:
        server = Server(broker, f"amqp://guest:guest@127.0.0.1:{port}/", log)
        _start_rabbitmq(server, folder, port)
    try:
        _wait_listening(server, port)
    except BaseException:
        server.stop()
        raise
    return server


def _start_rabbitmq(server: Server, folder: Path, port: int) -> None:
    epmd = free_port()
    (folder / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
    (folder / "enabled_plugins").write_text("[].\n")
    (folder / "env.conf").write_text("")
    env = {
        **os.environ,
        "HOME": str(folder),  # the Erlang cookie
        "ERL_EPMD_PORT": str(epmd),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_CONF_ENV_FILE": str(folder / "env.conf"),
        "RABBITMQ_NODENAME": f"bench{os.getpid()}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
    }
    # Its own epmd (the Erlang port mapper), so that none is left behind as a daemon.
    server.procs.append(_spawn(["epmd", "-port", str(epmd), "-address", "127.0.0.1"], server.log))
    time.sleep(0.3)
    server.procs.append(_spawn([_RABBIT], server.log, env))


class Servers:
    """Every broker that can run, started in ``folder``; stopped on exit. ``skipped``
    says why the others are not there."""

    def __init__(self, folder: Path, log: Callable[[str], None], only: tuple[str, ...]):
        self.folder = folder
        self.log = log
        self.only = only
        self.running: dict[str, Server] = {}
        self.skipped: dict[str, str] = {}
        self.versions: dict[str, str] = {}

    def __enter__(self) -> Servers:
        self.skipped = {b: why for b, why in install(self.log).items() if b in self.only}
        for broker in self.only:
            if broker in self.skipped:
                continue
            self.log(f"starting {PACKAGES[broker]}")
            try:
                self.running[broker] = start(broker, self.folder / broker)
            except (RuntimeError, OSError) as exc:
                self.skipped[broker] = f"{PACKAGES[broker]} did not start: {exc}"
                continue
            self.versions[broker] = version(broker)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in self.running.values():
            server.stop()
