"""A hub with keys (issue 18, items 1-2): a CURVE server that admits only enrolled client
keys, over real ZeroMQ on 127.0.0.1.

The attack measured in issue 18 ("a client with a freshly generated, never-enrolled
keypair was welcomed, registered as the service, and received and acked a command")
must fail here: the stranger's handshake is refused, it never gets a WELCOME, and a
command for the service it claims fails NoRoute instead of being acked by it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from ackbus import Context
from ackbus.blocking import BlockingEndpoint
from ackbus.cli import main
from ackbus.endpoint import Endpoint
from ackbus.errors import ConnectTimeout, KeyFileError, NoRoute
from ackbus.hub import Hub
from ackbus.transport._keys import generate_keys, load_keypair, load_public_key
from ackbus.wire import Command, decode_command, encode_hello
from ackbus.wire_pb2 import Bye, Hello
from helpers import eventually
from proc_harness import ROOT, Procs, free_port

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


@dataclass
class Keys:
    hub_dir: Path
    hub_key: Path
    """The hub's public key file, as clients get it."""
    orders: Path
    table: Path
    stranger: Path
    """Secret key files: orders and table are enrolled, the stranger never was."""


def make_keys(root: Path) -> Keys:
    hub_dir = root / "hub"
    hub_public, _ = generate_keys(hub_dir, "hub")
    secrets = {}
    for name in ("orders", "table", "stranger"):
        public, secrets[name] = generate_keys(root / name, name)
        if name != "stranger":
            (hub_dir / "clients").mkdir(exist_ok=True)
            shutil.copy(public, hub_dir / "clients" / public.name)  # enrolling = copying
    return Keys(hub_dir, hub_public, secrets["orders"], secrets["table"], secrets["stranger"])


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path)


@pytest.fixture
async def keyed_hub(keys: Keys) -> AsyncIterator[Hub]:
    async with Hub("tcp://127.0.0.1:0", keys=keys.hub_dir, heartbeat=0.5) as hub:
        yield hub


async def say_hello(sock: zmq.asyncio.Socket, service: str) -> bool:
    """Say HELLO as ``service`` handling Bye; True if a WELCOME came within 0.5 s."""
    hello = Hello(versions=[1], heartbeat_ms=500, commands=["ackbus.Bye"])
    hello.identity.service = service
    hello.identity.instance = "raw-1"
    try:
        async with asyncio.timeout(0.5):
            # A DEALER whose handshake failed has no pipe until it reconnects: the send
            # itself may wait, so it is inside the timeout too.
            await sock.send_multipart(encode_hello(hello))
            while True:
                if decode_command(await sock.recv_multipart()) is Command.WELCOME:
                    return True
    except TimeoutError:
        return False


def raw_dealer(
    ctx: zmq.asyncio.Context, address: str, curve: tuple[bytes, bytes, bytes] | None
) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
    sock.connect(address)
    return sock


async def test_enrolled_endpoints_send_and_receive_through_a_hub_with_keys(
    keys: Keys, keyed_hub: Hub
) -> None:
    address = keyed_hub.addresses[0]
    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(f"{msg.reason} from {ctx.sender.service}")

    receiver = Endpoint("table", address, keys=keys.table, hub_key=keys.hub_key)
    receiver.register_handler(Bye, on_bye)
    async with (
        receiver,
        Endpoint("orders", address, keys=keys.orders, hub_key=keys.hub_key) as sender,
    ):
        reports = [await sender.send(Bye(reason=str(i)), timeout=5) for i in range(20)]
    assert all(reports)
    assert got == [f"{i} from orders" for i in range(20)]
    assert keyed_hub.stats.unauthenticated == 0
    assert keyed_hub.enrolled == 2


async def test_a_never_enrolled_keypair_is_refused_in_the_handshake(
    keys: Keys, keyed_hub: Hub
) -> None:
    """Issue 18's measured attack, which must now fail."""
    address = keyed_hub.addresses[0]
    hub_public = load_public_key(keys.hub_key)
    fresh_public, fresh_secret = zmq.curve_keypair()  # freshly generated, never enrolled
    ctx = zmq.asyncio.Context()
    stranger = raw_dealer(ctx, address, (fresh_public, fresh_secret, hub_public))
    try:
        assert not await say_hello(stranger, "table")  # no WELCOME
        assert keyed_hub.stats.unauthenticated >= 1
        assert keyed_hub.stats.registered == 0
        assert keyed_hub.routing.instances() == []
        # The command it would have taken and acked fails instead, saying why.
        async with Endpoint("orders", address, keys=keys.orders, hub_key=keys.hub_key) as ep:
            report = await ep.send(Bye(reason="for the real table"), timeout=0.5)
        assert not report
        assert isinstance(report.error, NoRoute)
    finally:
        stranger.close(0)
        ctx.term()


async def test_an_endpoint_whose_key_is_refused_fails_start_saying_so(
    keys: Keys, keyed_hub: Hub
) -> None:
    address = keyed_hub.addresses[0]
    ep = Endpoint("table", address, keys=keys.stranger, hub_key=keys.hub_key, connect_timeout=0.5)
    with pytest.raises(ConnectTimeout, match="the hub refused this endpoint's CURVE key"):
        await ep.start()
    assert keyed_hub.stats.unauthenticated >= 1
    assert keyed_hub.stats.registered == 0


async def test_a_wrong_hub_key_fails_start_saying_what_it_can(keys: Keys, keyed_hub: Hub) -> None:
    address = keyed_hub.addresses[0]
    wrong = keys.orders.with_suffix(".key")  # a public key, but not the hub's
    ep = Endpoint("table", address, keys=keys.table, hub_key=wrong, connect_timeout=0.5)
    with pytest.raises(ConnectTimeout, match="CURVE handshake failed: hub_key may not be this"):
        await ep.start()
    assert keyed_hub.stats.registered == 0


async def test_a_plain_client_is_refused_by_a_hub_with_keys(keyed_hub: Hub) -> None:
    address = keyed_hub.addresses[0]
    ctx = zmq.asyncio.Context()
    plain = raw_dealer(ctx, address, None)
    try:
        assert not await say_hello(plain, "table")
    finally:
        plain.close(0)
        ctx.term()
    ep = Endpoint("table", address, connect_timeout=0.5)
    with pytest.raises(ConnectTimeout, match="the hub may require keys"):
        await ep.start()
    assert keyed_hub.stats.registered == 0


async def test_keys_come_from_the_environment(
    keys: Keys, keyed_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACKBUS_KEYS", str(keys.orders))
    monkeypatch.setenv("ACKBUS_HUB_KEY", str(keys.hub_key))
    address = keyed_hub.addresses[0]
    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)

    receiver = Endpoint("table", address)  # no keys in the code
    receiver.register_handler(Bye, on_bye)
    async with receiver, Endpoint("orders", address) as sender:
        assert await sender.send(Bye(reason="configured by the environment"), timeout=5)
    assert got == ["configured by the environment"]
    monkeypatch.setenv("ACKBUS_KEYS", str(keys.stranger))  # the environment is read per endpoint
    with pytest.raises(ConnectTimeout, match="refused this endpoint's CURVE key"):
        await Endpoint("table", address, connect_timeout=0.5).start()


def test_missing_key_files_raise_key_file_error_naming_the_file(keys: Keys) -> None:
    missing = keys.hub_dir / "nobody.key_secret"
    with pytest.raises(KeyFileError, match=f"^{missing}: no such file"):
        Endpoint("table", "tcp://127.0.0.1:1", keys=missing, hub_key=keys.hub_key)
    with pytest.raises(KeyFileError, match=r"orders\.key: holds only a public key"):
        Endpoint(
            "table", "tcp://127.0.0.1:1", keys=keys.orders.with_suffix(".key"), hub_key=keys.hub_key
        )
    with pytest.raises(KeyFileError, match=r"hub\.key_secret: no such file"):
        Hub("tcp://127.0.0.1:0", keys=keys.hub_dir / "clients")
    bare = keys.hub_dir.parent / "bare"
    generate_keys(bare, "hub")
    with pytest.raises(KeyFileError, match=r"clients: no such folder"):
        Hub("tcp://127.0.0.1:0", keys=bare)


async def test_a_key_enrolled_while_the_hub_runs_is_admitted_without_a_restart(
    keys: Keys, keyed_hub: Hub
) -> None:
    address = keyed_hub.addresses[0]
    ep = Endpoint("late", address, keys=keys.stranger, hub_key=keys.hub_key, connect_timeout=0.5)
    with pytest.raises(ConnectTimeout):
        await ep.start()
    shutil.copy(keys.stranger.with_suffix(".key"), keys.hub_dir / "clients")
    async with Endpoint("late", address, keys=keys.stranger, hub_key=keys.hub_key):
        assert keyed_hub.enrolled == 3


async def test_refusals_are_counted_and_logged_once_per_key_per_minute(
    keys: Keys, keyed_hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # even at DEBUG, pyzmq's per-handshake lines stay out
    address = keyed_hub.addresses[0]
    stranger = load_keypair(keys.stranger)
    curve = (stranger.public, stranger.secret, load_public_key(keys.hub_key))
    ctx = zmq.asyncio.Context()
    socks = [raw_dealer(ctx, address, curve) for _ in range(12)]  # 12 handshakes, one key
    try:
        await eventually(lambda: keyed_hub.stats.unauthenticated >= 12, timeout=5)
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
    refusals = [r for r in caplog.records if r.name.startswith("ackbus.hub")]
    refusal_lines = [r.getMessage() for r in refusals if "refused a CURVE client" in r.getMessage()]
    assert refusal_lines == [
        f"refused a CURVE client from 127.0.0.1: its key {stranger.public.decode()} "
        f"is not enrolled in {keys.hub_dir / 'clients'}"
    ]
    assert [r for r in caplog.records if r.name == "ackbus.hub.zap"] == []


def ackbus(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ackbus.cli", *argv], capture_output=True, text=True, timeout=30
    )


def test_ackbus_keys_generate_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = ackbus("keys", "generate", "audit", "--dir", str(tmp_path / "k"))  # a real process
    public, secret = tmp_path / "k/audit.key", tmp_path / "k/audit.key_secret"
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"wrote {public} (public) and {secret} (secret, mode 0600)\n"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert zmq.curve_public(load_keypair(secret).secret) == load_public_key(public)
    shown = ackbus("keys", "show", str(public))
    assert shown.stdout == load_public_key(public).decode() + "\n"
    # The rest in this process (same code, without a process start each):
    assert main(["keys", "generate", "audit", "--dir", str(tmp_path / "k")]) == 1
    assert capsys.readouterr().err == (
        f"ackbus keys generate: error: {public}: exists; pass --force (force=True) to replace it\n"
    )
    assert main(["keys", "generate", "audit", "--dir", str(tmp_path / "k"), "--force"]) == 0
    capsys.readouterr()
    assert main(["keys", "show", str(secret)]) == 0  # the secret file shows its public key
    assert capsys.readouterr().out == load_public_key(public).decode() + "\n"
    assert main(["keys", "show", str(tmp_path / "none.key")]) == 1
    assert f"{tmp_path / 'none.key'}: no such file" in capsys.readouterr().err


async def test_ackbus_hub_with_keys_admits_enrolled_processes_only(
    keys: Keys, procs: Procs
) -> None:
    """`ackbus hub --keys` in its own process: an enrolled blocking endpoint configured
    only by the environment and an enrolled async endpoint talk through it, a stranger
    does not get in, and the hub's log says so."""
    audit_public, audit_secret = generate_keys(keys.hub_dir.parent / "audit", "audit")
    shutil.copy(audit_public, keys.hub_dir / "clients")

    address = f"tcp://127.0.0.1:{free_port()}"
    hub = procs.keyed_hub(address, keys.hub_dir)
    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)

    receiver = Endpoint("table", address, keys=keys.table, hub_key=keys.hub_key)
    receiver.register_handler(Bye, on_bye)
    async with receiver:
        env = {"ACKBUS_KEYS": str(audit_secret), "ACKBUS_HUB_KEY": str(keys.hub_key)}
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            blocking = BlockingEndpoint("audit", address)
        await asyncio.to_thread(blocking.start)  # a blocking call never runs on the loop
        try:
            report = await asyncio.to_thread(blocking.send, Bye(reason="blocking"), timeout=5)
            assert report, report.error
        finally:
            await asyncio.to_thread(blocking.close)
        with pytest.raises(ConnectTimeout, match="refused this endpoint's CURVE key"):
            await Endpoint(
                "table", address, keys=keys.stranger, hub_key=keys.hub_key, connect_timeout=0.5
            ).start()
    assert got == ["blocking"]
    hub.send_signal(signal.SIGTERM)
    assert hub.wait(5) == 0
    assert hub.stderr is not None
    log = hub.stderr.read().decode()
    assert "refused a CURVE client from 127.0.0.1" in log


def test_ackbus_hub_with_a_missing_key_folder_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ackbus.hub", "--bind", "tcp://127.0.0.1:0", "--keys", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT / "generated"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "ackbus hub: error: nope: no such folder; make the hub's keys with "
        "`ackbus keys generate hub`"
    ]
