"""What only real ZeroMQ sockets can show: file descriptors released, CURVE."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile

import pytest
import zmq
from ackbus import ConnectTimeout, wire
from ackbus.transport import CurveKeys, TransportOptions, ZmqBackend
from ackbus.wire import Multipart
from helpers import eventually

T = 5.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle_fds(limit: int) -> int:
    """libzmq's reaper thread closes a socket's descriptors shortly after close()."""
    await eventually(lambda: open_fds() <= limit)
    return open_fds()


async def exchange(backend: ZmqBackend, bind: str, **link_opts: object) -> None:
    got: list[Multipart] = []
    listener = backend.bind(bind, on_receive=got.extend)
    link = backend.connect(
        listener.addresses[0],
        on_receive=lambda batch: None,
        options=TransportOptions(**link_opts),  # type: ignore[arg-type]
    )
    await link.wait_connected(T)
    for i in range(wire.MAX_BATCH + 1):  # two multiparts
        link.outbox.message(wire.encode_message(i.to_bytes(16, "big"), "t.T", b"x"))
    await eventually(lambda: len(got) >= 2)
    link.close()
    listener.close()


async def test_close_releases_every_descriptor_and_task() -> None:
    ctx = zmq.Context()  # own context: its threads and fds exist before we count
    backend = ZmqBackend(ctx)
    tmp = tempfile.mkdtemp(prefix="ackbus-", dir="/tmp")  # ipc paths must be short
    try:
        await exchange(backend, "tcp://127.0.0.1:0")  # warm up lazily created fds
        base = open_fds()
        tasks = asyncio.all_tasks()
        for _ in range(5):
            await exchange(backend, "tcp://127.0.0.1:0")
            await exchange(backend, f"ipc://{tmp}/fd.sock")
        assert await settle_fds(base) <= base
        assert asyncio.all_tasks() == tasks
        loop = asyncio.get_running_loop()
        selector = getattr(loop, "_selector", None)
        if selector is not None:  # no reader left registered on a closed descriptor
            assert all(key.fd >= 0 for key in selector.get_map().values())
    finally:
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
async def test_curve_encrypts_and_refuses_a_wrong_server_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = CurveKeys(*zmq.curve_keypair())
    client = CurveKeys(*zmq.curve_keypair())
    backend = ZmqBackend()
    got: list[Multipart] = []
    with backend.bind(
        "tcp://127.0.0.1:0", on_receive=got.extend, options=TransportOptions(curve=server)
    ) as listener:
        good = backend.connect(
            listener.addresses[0],
            on_receive=lambda b: None,
            options=TransportOptions(curve=client, curve_server_key=server.public),
        )
        await good.wait_connected(T)
        good.outbox.control(wire.encode_heartbeat())
        await eventually(lambda: bool(got))
        good.close()

        wrong = backend.connect(
            listener.addresses[0],
            on_receive=lambda b: None,
            options=TransportOptions(curve=client, curve_server_key=client.public),
        )
        with (
            caplog.at_level(logging.WARNING, logger="ackbus.transport"),
            pytest.raises(ConnectTimeout),
        ):
            await wrong.wait_connected(0.5)  # several reconnect attempts
        wrong.close()
        warnings = [r for r in caplog.records if "handshake failed" in r.getMessage()]
        assert len(warnings) <= 1  # said once at most, not at every attempt
        for record in warnings:  # the likely causes with keys, not a generic line
            assert "hub_key may not be this hub's" in record.getMessage()

        plain = backend.connect(listener.addresses[0], on_receive=lambda b: None)
        with pytest.raises(ConnectTimeout):
            await plain.wait_connected(0.3)
        plain.close()


def test_curve_link_needs_the_server_key() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="curve_server_key"):
            ZmqBackend().connect(
                "tcp://127.0.0.1:1",
                on_receive=lambda b: None,
                options=TransportOptions(curve=CurveKeys(*zmq.curve_keypair())),
            )

    asyncio.run(main())


async def test_listener_serves_several_addresses() -> None:
    tmp = tempfile.mkdtemp(prefix="ackbus-", dir="/tmp")
    backend = ZmqBackend()
    got: list[Multipart] = []
    try:
        with backend.bind(
            ["tcp://127.0.0.1:0", f"ipc://{tmp}/multi.sock"], on_receive=got.extend
        ) as listener:
            assert len(listener.addresses) == 2
            assert listener.addresses[0].startswith("tcp://127.0.0.1:")
            assert not listener.addresses[0].endswith(":0")
            links = [backend.connect(a, on_receive=lambda b: None) for a in listener.addresses]
            for link in links:
                await link.wait_connected(T)
                link.outbox.control(wire.encode_heartbeat())
            await eventually(lambda: len(got) == 2)
            assert got[0][0] != got[1][0]  # two peers, two routing ids
            for link in links:
                link.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def test_a_link_gives_up_a_hanging_connect_and_dials_again() -> None:
    # ZMQ_CONNECT_TIMEOUT: a connect begun while the path was down does not wait on the
    # kernel's SYN retransmissions (1, 2, 4, 8 ... s) after the path is back.
    backend = ZmqBackend()
    link = backend.connect("tcp://127.0.0.1:9", on_receive=lambda batch: None)
    custom = backend.connect(
        "tcp://127.0.0.1:9",
        on_receive=lambda batch: None,
        options=TransportOptions(connect_timeout_ms=250),
    )
    try:
        assert link._sock.getsockopt(zmq.CONNECT_TIMEOUT) == 1000  # type: ignore[attr-defined]
        assert custom._sock.getsockopt(zmq.CONNECT_TIMEOUT) == 250  # type: ignore[attr-defined]
    finally:
        link.close()
        custom.close()


async def test_a_listener_asks_the_kernel_for_a_deep_accept_queue() -> None:
    # A thousand instances reconnecting after a hub restart: with libzmq's backlog of
    # 100 the kernel drops SYNs, and those peers wait out TCP's retransmission backoff.
    backend = ZmqBackend()
    listener = backend.bind("tcp://127.0.0.1:0", on_receive=lambda batch: None)
    small = backend.bind(
        "tcp://127.0.0.1:0", on_receive=lambda batch: None, options=TransportOptions(backlog=64)
    )
    try:
        queues = {}
        for each in (listener, small):
            port = each.addresses[0].rsplit(":", 1)[1]
            # For a listening socket, ss's Send-Q column is the backlog the kernel uses.
            ss = await asyncio.create_subprocess_exec(
                "ss", "-Hltn", f"sport = :{port}", stdout=asyncio.subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(ss.communicate(), T)
            queues[each] = int(out.split()[2])
        assert queues[listener] == min(1024, _somaxconn())
        assert queues[small] == 64
    finally:
        listener.close()
        small.close()


async def test_sockets_time_out_dead_paths_in_the_kernel_and_send_no_zmtp_pings_by_default() -> (
    None
):
    # One heartbeat per question (docs/decisions.md): liveness is ackbus's heartbeat, a
    # dead path TCP_MAXRT's; ZMTP heartbeats only when asked for.
    backend = ZmqBackend()
    listener = backend.bind("tcp://127.0.0.1:0", on_receive=lambda batch: None)
    link = backend.connect(listener.addresses[0], on_receive=lambda batch: None)
    custom = backend.connect(
        listener.addresses[0],
        on_receive=lambda batch: None,
        options=TransportOptions(zmtp_heartbeat_ms=200, zmtp_timeout_ms=700, tcp_maxrt_ms=0),
    )

    def opts(each: object) -> tuple[int, ...]:
        sock = each._sock  # type: ignore[attr-defined]
        return tuple(
            sock.getsockopt(o) for o in (zmq.HEARTBEAT_IVL, zmq.HEARTBEAT_TIMEOUT, zmq.TCP_MAXRT)
        )

    try:
        assert opts(listener)[0] == opts(link)[0] == 0  # no PINGs
        assert opts(listener)[2] == opts(link)[2] == 3000
        assert opts(custom) == (200, 700, 0)
    finally:
        link.close()
        custom.close()
        listener.close()


def _somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


@pytest.mark.parametrize(
    ("event", "curve", "says"),
    [
        (zmq.EVENT_HANDSHAKE_FAILED_AUTH, True, "refused this endpoint's CURVE key"),
        (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, False, "keys on one side only"),
        (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, True, "hub_key may not be this hub's"),
        (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, False, "the hub may require keys"),
    ],
)
def test_a_failed_handshake_is_explained_by_its_likely_cause(
    event: int, curve: bool, says: str
) -> None:
    from ackbus.transport._zmq import _handshake_cause

    assert says in _handshake_cause(event, curve)
