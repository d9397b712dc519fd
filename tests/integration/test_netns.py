"""The test network itself (tests/support/netns.py, faultproxy.py): hosts that reach each
other, and each fault doing what the failover tests rely on."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator

import netns
import pytest
from faultproxy import FaultProxy

pytestmark = pytest.mark.slow

ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7000)); s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        while data := c.recv(65536):
            c.sendall(data)
    except OSError:
        pass  # reset by the fault proxy
    c.close()
"""


@pytest.fixture
def net() -> Iterator[netns.Cluster]:
    netns.require()
    with netns.Cluster(["a", "b"]) as cluster:
        yield cluster


def echo(net: netns.Cluster, host: str) -> None:
    net.start(host, "-c", ECHO, net.hosts[host].address, ready=b"ready")


def roundtrip(address: str, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    with socket.create_connection((address, 7000), timeout=timeout) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_hosts_reach_each_other_and_the_root_namespace(net: netns.Cluster) -> None:
    echo(net, "a")
    assert roundtrip(net.hosts["a"].address) == b"ping"  # from the root namespace
    client = (
        "import socket; s = socket.create_connection(('{}', 7000), timeout=2); "
        "s.sendall(b'x'); print('ready' if s.recv(1) == b'x' else 'wrong', flush=True)"
    ).format(net.hosts["a"].address)
    net.start("b", "-c", client, ready=b"ready")  # host to host


def test_a_partition_stops_traffic_without_a_reset_and_a_heal_restores_it(
    net: netns.Cluster,
) -> None:
    echo(net, "a")
    with socket.create_connection((net.hosts["a"].address, 7000), timeout=2) as s:
        s.sendall(b"1")
        assert s.recv(1) == b"1"
        net.partition("a")
        s.sendall(b"2")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):  # no answer, and no RST either
            s.recv(1)
        net.heal("a")
        s.settimeout(5)
        assert s.recv(1) == b"2"  # TCP's retransmission got through after the heal


def test_a_frozen_host_keeps_its_connections_but_answers_nothing(net: netns.Cluster) -> None:
    echo(net, "a")
    with socket.create_connection((net.hosts["a"].address, 7000), timeout=2) as s:
        net.freeze("a")
        s.sendall(b"1")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(1)
        net.thaw("a")
        s.settimeout(5)
        assert s.recv(1) == b"1"


def test_a_bandwidth_limit_slows_a_transfer(net: netns.Cluster) -> None:
    echo(net, "a")
    payload = b"x" * 200_000
    started = time.monotonic()
    assert roundtrip(net.hosts["a"].address, payload, timeout=10) == payload
    fast = time.monotonic() - started
    net.limit("a", "2mbit")
    started = time.monotonic()
    assert roundtrip(net.hosts["a"].address, payload, timeout=10) == payload
    slow = time.monotonic() - started
    assert slow > 0.5 > fast  # 1.6 Mbit at 2 Mbit/s: at least 0.8 s
    net.unlimit("a")


def test_the_cluster_leaves_nothing_behind() -> None:
    netns.require()
    with netns.Cluster(["x"]) as cluster:
        tag = cluster.tag
        echo(cluster, "x")
        proc = cluster.hosts["x"].procs[0]
        cluster.freeze("x")
    assert proc.poll() is not None  # a frozen process is killed too
    links = subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ab{tag}" not in links
    assert f"ab{tag}" not in spaces


async def test_the_fault_proxy_delays_holds_and_resets(net: netns.Cluster) -> None:
    echo(net, "a")
    upstream = (net.hosts["a"].address, 7000)
    async with FaultProxy((net.root_address, 0), upstream) as proxy:
        host, port = proxy.address

        async def ask(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(data)
                await writer.drain()
                return await reader.readexactly(len(data))
            finally:
                writer.close()

        async with asyncio.timeout(10):
            assert await ask(b"plain") == b"plain"
            proxy.delay = 0.2
            started = time.monotonic()
            assert await ask(b"slow") == b"slow"
            assert time.monotonic() - started >= 0.4  # 0.2 s each way
            proxy.delay = 0.0
            proxy.hold()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await ask(b"held")
            proxy.release()
            await asyncio.sleep(0.3)  # the held bytes go on, and that connection ends
            proxy.reset_at(3)
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await ask(b"reset me")
            assert proxy.resets == 1
            assert await ask(b"after") == b"after"
