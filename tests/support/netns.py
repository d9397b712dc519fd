"""A small network of Linux network namespaces for tests: one namespace per "host",
joined by veth links on one bridge, made and torn down by the test itself.

    with Cluster(["h1", "h2", "s1"]) as net:
        hub = net.start("h1", "-m", "ackbus.hub", "--bind", net.url("h1", 5555), ...)
        net.partition("h1")    # its link down: no FIN, no RST, packets just stop
        net.heal("h1")
        net.freeze("h1")       # SIGSTOP every process started on it
        net.thaw("h1")
        net.limit("s1", "1mbit")  # tc tbf on its link (the kernel here has no netem)

Addresses are from 198.51.100.0/24 (TEST-NET-2, documentation only), one /27 block per
cluster so that clusters of parallel test workers do not share a route: the root
namespace (where the test process runs) gets the block's first address on the bridge
(:attr:`Cluster.root_address`), so a test's own endpoints reach every host, and the
hosts the next ones. Interface and namespace names carry a tag unique to the
cluster, so parallel test workers do not collide. Needs root (``ip netns`` and ``ip link``
need CAP_NET_ADMIN): :func:`require` fails the test with a sentence saying so.

Imported by tests as ``netns`` (tests/support is on pytest's pythonpath)."""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import pytest
from proc_harness import Procs

SUBNET = "198.51.100"
BLOCKS = 8
"""/27 blocks of the /24: at most this many clusters at once on a machine, of at most
29 hosts each."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or ``None`` when they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing: apt-get install iproute2"
    if os.geteuid() != 0:
        return (
            "network namespaces need root (CAP_NET_ADMIN): run the namespaced tests as root, "
            "as CI does"
        )
    probe = f"abprobe{os.getpid() % 100_000}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return f"`ip netns add` failed here ({err.decode().strip() or exc}): no namespaces"
    _ip("netns", "del", probe)
    return None


def require() -> None:
    """Fail the calling test with a sentence when namespaces cannot be made (never skip:
    a run that cannot test failover must say so)."""
    why = unavailable()
    if why is not None:
        pytest.fail(f"namespaced network unavailable: {why}", pytrace=False)


@dataclass
class Host:
    name: str
    address: str
    netns: str
    veth: str
    """The link's end on the bridge (in the root namespace): down = partitioned."""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


class Cluster:
    """The namespaces, the bridge and every process started on a host; :meth:`close`
    (or leaving the ``with``) kills the processes and removes the rest."""

    def __init__(self, hosts: Iterable[str]) -> None:
        self._lock, block = _take_block()
        self.base = block * 32
        self.root_address = f"{SUBNET}.{self.base + 1}"
        self.tag = secrets.token_hex(2)
        self.bridge = f"ab{self.tag}br"
        self.hosts: dict[str, Host] = {}
        self.procs = Procs()
        names = list(hosts)
        if len(names) > 29:
            self._lock.close()
            raise ValueError("at most 29 hosts")
        self._made: list[tuple[str, ...]] = []  # what to delete, newest last
        self._files: list[Path] = []  # hosts-file folders under /etc/netns
        try:
            self._build(names)
        except BaseException:
            self.close()
            raise

    def _build(self, names: list[str]) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", "del", self.bridge))
        _ip("addr", "add", f"{self.root_address}/27", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, name in enumerate(names):
            netns = f"ab{self.tag}-{name}"
            veth, inner = f"ab{self.tag}v{i}", f"ab{self.tag}i{i}"
            _ip("netns", "add", netns)
            self._made.append(("netns", "del", netns))
            _ip("link", "add", veth, "type", "veth", "peer", "name", inner)
            self._made.append(("link", "del", veth))  # deleting one end deletes both
            _ip("link", "set", inner, "netns", netns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            address = f"{SUBNET}.{self.base + 2 + i}"
            _ip("-n", netns, "addr", "add", f"{address}/27", "dev", inner)
            _ip("-n", netns, "link", "set", inner, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            self.hosts[name] = Host(name, address, netns, veth)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for host in self.hosts.values():
            for proc in host.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)  # a frozen process cannot die
                self.procs.kill(proc)
        while self._made:
            args = self._made.pop()
            subprocess.run(["ip", *args], capture_output=True, timeout=10)
        for folder in self._files:
            shutil.rmtree(folder, ignore_errors=True)
        self._lock.close()  # the block is free again

    # -- addresses and processes ---------------------------------------------------------

    def url(self, host: str, port: int) -> str:
        return f"tcp://{self.hosts[host].address}:{port}"

    def start(
        self,
        host: str,
        *argv: str,
        ready: bytes,
        timeout: float = 15.0,
        env: dict[str, str] | None = None,
        stderr: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """``python ARGV`` inside ``host``'s namespace (``ip netns exec`` execs it, so
        the process's pid is python's: signals reach it), once it printed ``ready``."""
        h = self.hosts[host]
        proc = self.procs.start(
            *argv,
            ready=ready,
            timeout=timeout,
            wrap=("ip", "netns", "exec", h.netns),
            env=env,
            stderr=stderr,
        )
        h.procs.append(proc)
        return proc

    def name(self, name: str, hosts: list[str]) -> None:
        """Make ``name`` resolve, inside every host, to the addresses of ``hosts`` (a
        hosts file per namespace, /etc/netns/NS/hosts, which ``ip netns exec``
        mounts over /etc/hosts for the processes it starts; removed on close)."""
        lines = ["127.0.0.1 localhost"] + [f"{self.hosts[h].address} {name}" for h in hosts]
        for host in self.hosts.values():
            folder = Path("/etc/netns") / host.netns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text("\n".join(lines) + "\n")
            self._files.append(folder)

    # -- faults ----------------------------------------------------------------------------

    def partition(self, host: str) -> None:
        """Cut ``host`` off: its bridge link goes down. Nothing is sent to either side
        (no FIN, no RST); connections time out as across a dead switch."""
        _ip("link", "set", self.hosts[host].veth, "down")

    def heal(self, host: str) -> None:
        _ip("link", "set", self.hosts[host].veth, "up")

    def freeze(self, host: str) -> None:
        """SIGSTOP every live process started on ``host`` (its kernel still answers TCP:
        connections stay up, nothing is read)."""
        for proc in self.hosts[host].procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGSTOP)

    def thaw(self, host: str) -> None:
        for proc in self.hosts[host].procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)

    def limit(self, host: str, rate: str, burst: str = "32kbit", latency: str = "50ms") -> None:
        """Limit what the bridge sends to ``host`` to ``rate`` (``tc qdisc … tbf``)."""
        subprocess.run(
            ["tc", "qdisc", "replace", "dev", self.hosts[host].veth, "root", "tbf",
             "rate", rate, "burst", burst, "latency", latency],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip

    def unlimit(self, host: str) -> None:
        subprocess.run(
            ["tc", "qdisc", "del", "dev", self.hosts[host].veth, "root"],
            capture_output=True,
            timeout=10,
        )


def _take_block() -> tuple[IO[bytes], int]:
    """An address block no other cluster on this machine holds: an exclusive lock on
    its file (released when the file closes, or the process dies)."""
    for block in range(BLOCKS):
        f = open(f"/tmp/ackbus-netns-block-{block}.lock", "wb")  # noqa: SIM115 - held
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return f, block
    raise RuntimeError(f"all {BLOCKS} address blocks of {SUBNET}.0/24 are in use")
