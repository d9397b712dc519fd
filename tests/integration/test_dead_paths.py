"""A host gone without a reset (its link cut: no FIN, no RST), on the namespaced network:
the kernel drops both ends' connections once what they sent goes unacknowledged for
``tcp_maxrt_ms`` (TCP_USER_TIMEOUT). No ZMTP heartbeat is needed for it: the hub here has
them off, and an endpoint's links have none by default. The hub forgets the cut-off
instance instead of keeping it as stalled, and the instance is registered again within
about a second of the heal."""

from __future__ import annotations

import asyncio
import select
import subprocess
import time
from collections.abc import Iterator

import netns
import pytest
from ackbus.hub import Hub
from ackbus.transport import TransportOptions

pytestmark = pytest.mark.slow

HEARTBEAT = 0.3
MAXRT_MS = 1500
PORT = 7100

INSTANCE = f"""
import asyncio, sys
from ackbus import Endpoint
from ackbus.transport import TransportOptions

async def main():
    ep = Endpoint("far", [sys.argv[1]], heartbeat={HEARTBEAT},
                  options=TransportOptions(tcp_maxrt_ms={MAXRT_MS}))
    async with ep:
        print("ready", flush=True)
        up = True
        while True:  # say each time the link's connection drops or comes back
            if ep._links[0].link.connected != up:
                up = not up
                print("up" if up else "down", flush=True)
            await asyncio.sleep(0.02)

asyncio.run(main())
"""


@pytest.fixture
def net() -> Iterator[netns.Cluster]:
    netns.require()
    with netns.Cluster(["far"]) as cluster:
        yield cluster


def lines(proc: subprocess.Popen[bytes], until: float) -> list[str]:
    """What ``proc`` printed until ``until`` (monotonic) or its end, line by line."""
    assert proc.stdout is not None
    out = []
    while (left := until - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:  # it ended: nothing more will come
                break
            out.append(line.decode().strip())
    return out


async def test_a_cut_off_host_loses_its_connections_at_both_ends_and_comes_back(
    net: netns.Cluster,
) -> None:
    options = TransportOptions(tcp_maxrt_ms=MAXRT_MS, zmtp_heartbeat_ms=0)
    async with Hub(
        f"tcp://{net.root_address}:{PORT}", heartbeat=HEARTBEAT, options=options, insecure=True
    ) as hub:
        proc = await asyncio.to_thread(
            net.start, "far", "-c", INSTANCE, f"tcp://{net.root_address}:{PORT}", ready=b"ready"
        )
        assert hub.routing.instances()  # registered before "ready"
        net.partition("far")
        cut = time.monotonic()
        # The hub heartbeats the instance, unacknowledged: MAXRT drops the connection,
        # and the hub's next check forgets the silent instance instead of keeping it.
        while hub.routing.instances():
            assert time.monotonic() - cut < 6, "the cut-off instance is still registered"
            await asyncio.sleep(0.05)
        forgotten = time.monotonic() - cut
        said = await asyncio.to_thread(lines, proc, cut + 4)
        assert "down" in said, said  # the instance's own link dropped too
        net.heal("far")
        healed = time.monotonic()
        while not hub.routing.instances():
            assert time.monotonic() - healed < 3, "not registered again after the heal"
            await asyncio.sleep(0.02)
        back = time.monotonic() - healed
    print(f"\nforgotten {forgotten:.1f} s after the cut; registered {back:.2f} s after the heal")
