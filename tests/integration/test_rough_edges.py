"""The rough edges a newcomer hit (issue 20, section 5), each with what now happens:
real hubs and endpoints on TCP loopback, no mocks.

* a blocking endpoint called inside a running event loop raises at once;
* the blocking API raises ConnectTimeout and SendWindowTimeout as the async one does;
* a ConnectTimeout says what to check (nothing listening, a name that does not resolve,
  a peer that is no hub), and a first send's timeout bounds the connect wait;
* a send to a hub that died says the hub is silent in its report.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from ackbus import (
    AckTimeout,
    BlockingEndpoint,
    ConnectTimeout,
    Context,
    Endpoint,
    Hub,
    Policy,
    SendWindowTimeout,
    WaitTimeout,
)
from helpers import FAST, HEARTBEAT, running_hub
from poker import table_ackbus, table_pb2
from proc_harness import free_port

# ---------------------------------------------------------------- blocking in a loop


async def test_a_blocking_call_inside_a_running_loop_raises_at_once(hub: str) -> None:
    """It used to freeze the loop (a 2 s stall measured): now RuntimeError, naming what
    to use instead, before anything waits. Construction and close stay allowed."""
    blocking = BlockingEndpoint("dealer", hub, heartbeat=HEARTBEAT)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"cannot be called from a running event loop"):
            blocking.start()
        with pytest.raises(RuntimeError, match=r"await asyncio\.to_thread\(ep\.send, \.\.\.\)"):
            table_ackbus.TableBlockingClient(blocking).send_start_hand(table_id="t1")
        for call in (
            lambda: blocking.publish(table_pb2.HandStarted()),
            lambda: blocking.request(table_pb2.GetTableState(), table_pb2.TableState),
        ):
            with pytest.raises(RuntimeError, match=r"use ackbus\.Endpoint"):
                call()
        assert time.monotonic() - started < 0.5  # nothing waited
        # The same endpoint works from a worker thread of this loop.
        await asyncio.to_thread(blocking.start)
        assert blocking.endpoint.stats.acked == 0
    finally:
        await asyncio.to_thread(blocking.close)


# ---------------------------------------------------------------- the same errors


def test_the_blocking_api_raises_connect_timeout_as_the_async_one() -> None:
    """It used to raise WaitTimeout("blocking call did not finish within None s"): the
    loop thread's catch of TimeoutError swallowed ConnectTimeout (a TimeoutError too)."""
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConnectTimeout, match="nothing accepted a connection") as caught:
        BlockingEndpoint("dealer", address, connect_timeout=0.3).start()
    assert "within None s" not in str(caught.value)


def test_the_blocking_api_raises_send_window_timeout_as_the_async_one() -> None:
    """A full window: the blocking send raises SendWindowTimeout, not WaitTimeout."""

    async def main() -> None:
        async with running_hub("tcp") as bus:
            stuck = asyncio.Event()

            async def never(msg: table_pb2.StartHand, ctx: Context) -> None:
                await stuck.wait()

            receiver = Endpoint("table", bus.address, heartbeat=HEARTBEAT)
            receiver.register_handler(table_pb2.StartHand, never)
            async with receiver:

                def blocking_side() -> type[BaseException]:
                    slow = Policy(ack_timeout=5.0, deadline=5.0)
                    with BlockingEndpoint("dealer", bus.address, window=1, policy=slow) as ep:
                        ep.send(table_pb2.StartHand(table_id="a"), wait_ack=False)
                        try:
                            ep.send(table_pb2.StartHand(table_id="b"), timeout=0.3)
                        except WaitTimeout as exc:
                            return type(exc)
                    return type(None)

                got = await asyncio.wait_for(asyncio.to_thread(blocking_side), 10)
                stuck.set()
            assert got is SendWindowTimeout

    asyncio.run(main())


# ---------------------------------------------------------------- ConnectTimeout says what to check


async def test_a_connect_timeout_says_what_to_check() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectTimeout) as caught:
        await Endpoint("dealer", address, connect_timeout=0.3).start()
    assert str(caught.value).endswith(
        f"answered within 0.3 s; nothing accepted a connection at {address}: is `ackbus hub "
        f"--bind {address}` (or an embedded Hub) running there, and does no firewall drop "
        "the port?"
    )


async def test_a_host_that_does_not_resolve_is_named() -> None:
    """libzmq retries an unresolvable name quietly forever; the error says so."""
    address = "tcp://no-such-hub.invalid:5555"  # .invalid never resolves (RFC 2606)
    with pytest.raises(ConnectTimeout, match=r"the host 'no-such-hub\.invalid' of .* does not"):
        await Endpoint("dealer", address, connect_timeout=0.3).start()


async def test_a_peer_that_is_not_a_hub_is_named() -> None:
    """A ZeroMQ ROUTER that never answers HELLO (another service on the hub's port)."""
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(ConnectTimeout, match="accepted the connection but never answered"):
            await Endpoint("dealer", f"tcp://127.0.0.1:{port}", connect_timeout=0.5).start()
    finally:
        router.close(0)
        ctx.term()


async def test_the_first_sends_timeout_bounds_the_connect_wait() -> None:
    """An endpoint not started is started by its first send; a send with timeout=0.4
    fails after 0.4 s, not after connect_timeout (5 s by default)."""
    ep = Endpoint("dealer", f"tcp://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ConnectTimeout, match=r"within 0\.4 s \(the send's timeout\)"):
        await ep.send(table_pb2.StartHand(table_id="t1"), timeout=0.4)
    assert time.monotonic() - started < 2.0
    assert ep.closed


async def test_a_first_send_starts_the_endpoint(hub: str) -> None:
    got: list[str] = []

    async def on_start(msg: table_pb2.StartHand, ctx: Context) -> None:
        got.append(msg.table_id)

    async with Endpoint("table", hub, policy=FAST) as table:
        table.register_handler(table_pb2.StartHand, on_start)
        dealer = Endpoint("dealer", hub, policy=FAST)
        try:
            report = await dealer.send(table_pb2.StartHand(table_id="t1"), timeout=3)
        finally:
            await dealer.close()
    assert report, report.error
    assert got == ["t1"]


# ---------------------------------------------------------------- a hub that died


async def test_a_send_to_a_hub_that_died_says_the_hub_is_silent() -> None:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    hub = Hub(address, heartbeat=HEARTBEAT)
    await hub.start()
    ep = Endpoint("dealer", address, heartbeat=HEARTBEAT, policy=FAST)
    try:
        await ep.start()
        await hub.close()
        report = await ep.send(table_pb2.StartHand(table_id="t1"), timeout=2)
    finally:
        await ep.close()
        await hub.close()
    assert isinstance(report.error, AckTimeout)
    text = str(report.error)
    assert f"no hub answers this endpoint ({address} " in text, text
    assert text.endswith("is the hub running?")
    assert any(why in text for why in ("said BYE", "silent for", "connection dropped")), text


async def test_a_timeout_with_a_live_hub_says_nothing_of_hubs(hub: str) -> None:
    async def slow(msg: table_pb2.StartHand, ctx: Context) -> None:
        await asyncio.sleep(1)

    async with Endpoint("table", hub) as table:
        table.register_handler(table_pb2.StartHand, slow)
        async with Endpoint("dealer", hub, policy=FAST.with_(deadline=0.5)) as dealer:
            report = await dealer.send(table_pb2.StartHand(table_id="t1"))
    assert isinstance(report.error, AckTimeout)
    assert "no hub answers" not in str(report.error)


def test_socket_module_resolves_localhost() -> None:
    """The name check above relies on the system resolver answering for localhost."""
    assert socket.getaddrinfo("localhost", None)
