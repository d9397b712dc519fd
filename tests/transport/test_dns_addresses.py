"""``dns://NAME:PORT`` hub addresses: one link per IPv4 address the name resolves to."""

from __future__ import annotations

import asyncio

import pytest
from ackbus.endpoint import Endpoint
from ackbus.errors import AddressError
from ackbus.hub import Hub
from ackbus.transport._address import resolve


async def test_a_plain_address_is_kept_and_a_name_becomes_its_addresses() -> None:
    got = await resolve(["ipc:///tmp/x", "dns://localhost:5555", "tcp://127.0.0.1:5555"], 5.0)
    # localhost is 127.0.0.1 (IPv4 only); a plain address is kept as given, repeats too
    assert got == ["ipc:///tmp/x", "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"]


async def test_a_name_that_does_not_resolve_is_an_address_error_saying_what_to_check() -> None:
    with pytest.raises(AddressError) as err:
        await resolve(["dns://no-such-host.invalid:5555"], 5.0)
    text = str(err.value)
    assert text.startswith("cannot connect dns://no-such-host.invalid:5555: no-such-host.invalid")
    assert "does not resolve" in text
    assert "/etc/resolv.conf" in text


@pytest.mark.parametrize("bad", ["dns://hubs", "dns://hubs:x", "dns://:5555", "dns://h:70000"])
async def test_a_dns_address_without_a_name_and_port_is_refused(bad: str) -> None:
    with pytest.raises(AddressError, match="dns://NAME:PORT"):
        await resolve([bad], 5.0)


async def test_an_endpoint_given_a_name_reaches_the_hub_behind_it() -> None:
    async with Hub(bind="tcp://127.0.0.1:0", heartbeat=0.2) as hub:
        port = hub.addresses[0].rpartition(":")[2]
        ep = Endpoint("svc", f"dns://localhost:{port}", heartbeat=0.2)
        async with asyncio.timeout(10):
            await ep.start()  # returns once the hub welcomed it
        try:
            assert [link.link.address for link in ep._links] == [f"tcp://127.0.0.1:{port}"]
        finally:
            await ep.close()
