"""A bind or connect that cannot work raises AddressError, never a raw ZMQError: it
names the address, the reason and what to do, and leaves nothing open behind it."""

from __future__ import annotations

import asyncio
import errno
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import zmq
from ackbus import AckbusError, AddressError
from ackbus.endpoint import Endpoint
from ackbus.hub import Hub
from ackbus.transport import MemoryBackend, ZmqBackend
from proc_harness import free_port

from .test_zmq import open_fds, settle_fds

T = 5.0


def ignore(batch: object) -> None:
    pass


@pytest.fixture
def busy() -> Iterator[str]:
    """A TCP address a plain zmq socket (another "process") is listening on."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield f"tcp://127.0.0.1:{port}"
    sock.close(0)
    ctx.term()


@pytest.fixture
def tmp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ackbus-", dir="/tmp")  # ipc paths must be short
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_port_in_use_says_which_and_what_to_do(busy: str) -> None:
    with pytest.raises(AddressError) as caught:
        ZmqBackend().bind(busy, on_receive=ignore)
    err = caught.value
    assert isinstance(err, AckbusError)
    assert isinstance(err, OSError)
    assert isinstance(err.__cause__, zmq.ZMQError)
    assert (err.address, err.op, err.errno) == (busy, "bind", errno.EADDRINUSE)
    assert str(err) == (
        f"cannot bind {busy}: address already in use; another process (or another socket "
        f"in this one) is listening on {busy}: stop it, or bind another port "
        "(tcp://127.0.0.1:0 picks a free one)"
    )


async def test_a_hub_on_a_port_in_use_raises_address_error(busy: str) -> None:
    hub = Hub(busy)
    with pytest.raises(AddressError, match="address already in use"):
        async with asyncio.timeout(T), hub:
            pass
    with pytest.raises(AddressError, match=busy):  # start() again: same answer, no state
        await asyncio.wait_for(hub.start(), T)


BAD = [
    # address, errno, words in the hint
    ("tcp://nonsense", errno.EINVAL, "the port is missing"),
    ("tcp://127.0.0.1", errno.EINVAL, "the port is missing"),
    ("tcp://127.0.0.1:abc", errno.EINVAL, "the port 'abc' is not a number"),
    ("tcp://127.0.0.1:70000", errno.EINVAL, "port 70000 is out of range"),
    ("foo://x", errno.EPROTONOSUPPORT, "unknown transport 'foo'"),
    ("bad address", errno.EINVAL, "an address looks like tcp://HOST:PORT"),
    ("", errno.EINVAL, "an address looks like"),
]


@pytest.mark.parametrize(("address", "code", "hint"), BAD)
async def test_a_malformed_address_is_refused_on_bind(address: str, code: int, hint: str) -> None:
    with pytest.raises(AddressError) as caught:
        ZmqBackend().bind(address, on_receive=ignore)
    assert caught.value.errno == code
    assert caught.value.hint.startswith(hint)
    assert str(caught.value).startswith(f"cannot bind {address}: ")


@pytest.mark.parametrize(
    ("address", "code", "hint"),
    [*BAD, ("tcp://*:5555", errno.EINVAL, "a connect needs a real host and port")],
)
async def test_a_malformed_address_is_refused_on_connect(
    address: str, code: int, hint: str
) -> None:
    with pytest.raises(AddressError) as caught:
        ZmqBackend().connect(address, on_receive=ignore)
    assert (caught.value.errno, caught.value.op) == (code, "connect")
    assert caught.value.hint.startswith(hint)


async def test_port_70000_is_refused_rather_than_bound_as_4464() -> None:
    # libzmq takes the port modulo 65536; an unrelated port would be listening.
    with pytest.raises(AddressError, match="out of range"):
        ZmqBackend().bind("tcp://127.0.0.1:70000", on_receive=ignore)


async def test_an_ipc_path_in_a_missing_directory_names_the_directory(tmp: str) -> None:
    address = f"ipc://{tmp}/no/such/dir/hub.sock"
    with pytest.raises(AddressError) as caught:
        ZmqBackend().bind(address, on_receive=ignore)
    assert caught.value.errno == errno.ENOENT
    assert f"the directory {tmp}/no/such/dir does not exist" in str(caught.value)


async def test_an_address_that_is_not_this_machines_names_the_host() -> None:
    with pytest.raises(AddressError, match=r"'192\.0\.2\.1' is not an address of this machine"):
        ZmqBackend().bind("tcp://192.0.2.1:5555", on_receive=ignore)  # TEST-NET-1


async def test_an_endpoint_with_a_malformed_hub_address_raises_at_start() -> None:
    ep = Endpoint("svc", ["bad address"], connect_timeout=T)
    with pytest.raises(AddressError, match="cannot connect bad address"):
        async with asyncio.timeout(T), ep:
            pass


async def test_an_endpoint_whose_second_hub_address_is_bad_releases_the_first_link() -> None:
    memory = MemoryBackend()
    async with Hub("inmem://hub-a", backend=memory) as hub:
        ep = Endpoint("svc", [hub.addresses[0], "foo://x"], backend=memory, connect_timeout=T)
        with pytest.raises(AddressError):
            await ep.start()
        assert ep._links == []  # the first hub's link was closed, not left behind
        with pytest.raises(AckbusError):  # closed for good: no half-started endpoint
            await ep.start()


async def test_a_failed_bind_releases_what_it_bound_and_leaks_no_descriptor(
    busy: str, tmp: str
) -> None:
    ctx = zmq.Context()  # own context: its threads and fds exist before we count
    backend = ZmqBackend(ctx)
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    readers = len(selector.get_map()) if selector is not None else 0
    try:
        backend.bind("tcp://127.0.0.1:0", on_receive=ignore).close()  # warm up
        base = open_fds()
        # The errors are kept: their tracebacks hold the failed constructors' frames,
        # so a socket is closed here only if the constructor closed it (not the GC).
        kept: list[pytest.ExceptionInfo[AddressError]] = []
        for i in range(30):
            first = [f"tcp://127.0.0.1:{free_port()}", f"ipc://{tmp}/{i}.sock"]
            with pytest.raises(AddressError, match=busy) as caught:
                backend.bind([*first, busy], on_receive=ignore)
            kept.append(caught)
            # What the failed bind had bound is free at once, not a moment later when
            # libzmq's I/O thread gets to it (without the wait, this fails 1 time in 10).
            backend.bind(first, on_receive=ignore).close()
            with pytest.raises(AddressError) as caught:
                backend.connect("tcp://nonsense", on_receive=ignore)
            kept.append(caught)
        assert await settle_fds(base) <= base
        if selector is not None:
            assert len(selector.get_map()) == readers  # no reader left behind
        assert len(kept) == 60
    finally:
        ctx.destroy(linger=0)  # never hangs, even on a socket left open


async def test_memory_backend_raises_the_same_error_for_a_name_in_use() -> None:
    backend = MemoryBackend()
    listener = backend.bind("inmem://hub", on_receive=ignore)
    with pytest.raises(AddressError) as caught:
        backend.bind("inmem://hub", on_receive=ignore)
    assert caught.value.errno == errno.EADDRINUSE
    assert "use another name, or inmem://*" in str(caught.value)
    with pytest.raises(AddressError, match="cannot bind inmem://twice: address already in use"):
        backend.bind(["inmem://twice", "inmem://twice"], on_receive=ignore)
    # A bind that failed part-way took nothing: its first name is still free.
    with pytest.raises(AddressError):
        backend.bind(["inmem://free", "inmem://hub"], on_receive=ignore)
    backend.bind("inmem://free", on_receive=ignore).close()
    listener.close()
    backend.bind("inmem://hub", on_receive=ignore).close()  # free after close


async def test_memory_backend_refuses_other_transports() -> None:
    backend = MemoryBackend()
    with pytest.raises(AddressError, match="unknown transport 'tcp': use inmem://NAME"):
        backend.bind("tcp://127.0.0.1:0", on_receive=ignore)
    with pytest.raises(AddressError, match=r"cannot connect foo: .*inmem://NAME"):
        backend.connect("foo", on_receive=ignore)


async def test_a_closed_listener_gives_its_address_back_at_once(tmp: str) -> None:
    """A hub closed and started again on the same address in the same process (or a
    test doing so) binds at once: close() returns once libzmq let go of the port."""
    backend = ZmqBackend()
    addresses = [f"tcp://127.0.0.1:{free_port()}", f"ipc://{tmp}/again.sock"]
    for _ in range(30):
        listener = backend.bind(addresses, on_receive=ignore)
        listener.close()
    async with Hub(addresses[0]) as hub:
        first = hub.addresses[0]
    async with Hub(first):
        pass
