"""A hub with keys and an access file (issue 18, items 3 and 4), as real processes over
TCP on 127.0.0.1 with CURVE: `ackbus hub --keys DIR --access FILE`, real endpoints, and raw
ZeroMQ clients holding valid keys for other services.

A valid key may register only as the services its table names, send only the types it
allows, and cannot forge acks or senders; legitimate traffic flows unchanged throughout;
SIGHUP reads the file again without dropping connections.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from ackbus import Context, Identity, Unauthorized
from ackbus.endpoint import Endpoint
from ackbus.errors import ConnectTimeout
from ackbus.wire import (
    ACK_FRAME,
    Command,
    decode_command,
    decode_messages,
    encode_envelope,
    encode_message,
    encode_messages,
)
from ackbus.wire_pb2 import Bye, Hello, Welcome
from curve_keys import Keys, enroll, refusal_of
from helpers import eventually, say_hello
from proc_harness import Procs, free_port, run_hub

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")

ACCESS = """\
[clients.orders]
services = ["orders"]
send = ["ackbus.Bye", "ackbus.Hello"]

[clients.table]
services = ["table"]
handles = ["ackbus.Bye"]
send = []

[clients.audit]                  # a valid key, for another service
services = ["audit"]
send = ["ackbus.Welcome"]
"""


@dataclass
class Setup(Keys):
    hub: subprocess.Popen[bytes]
    access: Path


def make_setup(root: Path) -> tuple[Path, Path, Path, dict[str, Path]]:
    hub_dir, hub_key, secrets = enroll(root, ("orders", "table", "audit"))
    access = root / "access.toml"
    access.write_text(ACCESS)
    return hub_dir, hub_key, access, secrets


@pytest.fixture
def setup(tmp_path: Path, procs: Procs) -> Setup:
    """`ackbus hub --keys --access` in its own process (procs reaps it)."""
    hub_dir, hub_key, access, secrets = make_setup(tmp_path)
    address = f"tcp://127.0.0.1:{free_port()}"
    hub = procs.keyed_hub(
        address, hub_dir, "--access", str(access), "--heartbeat", "0.25", "--log-level", "INFO"
    )
    return Setup(address, hub_dir, hub_key, secrets, hub, access)


class Table:
    """The real table: an endpoint with the table key, handling Bye."""

    def __init__(self, setup: Setup) -> None:
        self.senders: list[Identity] = []
        self.ep = setup.endpoint("table", "table")
        self.ep.register_handler(Bye, self.on_bye)

    async def on_bye(self, msg: Bye, ctx: Context) -> None:
        self.senders.append(ctx.sender)


async def all_acked(orders: Endpoint, n: int = 20) -> bool:
    reports = await asyncio.gather(*(orders.send(Bye(reason=str(i)), timeout=5) for i in range(n)))
    return all(reports)


async def test_a_valid_key_may_register_only_as_its_services(setup: Setup) -> None:
    table = Table(setup)
    ctx = zmq.asyncio.Context()
    try:
        async with table.ep, setup.endpoint("orders", "orders") as orders:
            assert await all_acked(orders)
            audit = setup.raw(ctx, "audit")
            # As the service its key may not serve: refused, naming the rule.
            code, text = refusal_of(await say_hello(audit, "table", "t-evil", ("ackbus.Bye",)))
            assert code == "UNAUTHORIZED"
            assert "key 'audit' may not register as service 'table'" in text
            assert f"clients.audit.services in {setup.access}" in text
            # As its own service, declaring table's command type: that would make the
            # type ambiguous (every send of it NoRoute), so it is refused too.
            code, text = refusal_of(await say_hello(audit, "audit", "a-1", ("ackbus.Bye",)))
            assert code == "UNAUTHORIZED"
            assert "a second service would make it ambiguous" in text
            assert await all_acked(orders)  # nothing changed for the legitimate traffic
            assert len(table.senders) == 40
            # A real endpoint with the wrong key says why it could not start.
            wrong = setup.endpoint("table", "audit", connect_timeout=1.0)
            with pytest.raises(ConnectTimeout, match="may not register as service 'table'"):
                await wrong.start()
    finally:
        ctx.destroy(0)


async def test_a_message_the_key_may_not_send_fails_unauthorized(setup: Setup) -> None:
    async with Table(setup).ep, setup.endpoint("orders", "orders") as orders:
        report = await orders.send(Welcome(version=1), timeout=5)
        assert not report
        assert isinstance(report.error, Unauthorized)
        assert "key 'orders' may not send ackbus.Welcome" in report.error.rule
        assert "clients.orders.send" in str(report.error)
        assert report.attempts == 1  # refused at once, not retried
        assert await all_acked(orders, 5)


async def test_a_third_peers_forged_acks_complete_nothing(setup: Setup) -> None:
    """A third peer with a valid key (audit) sees the sender's token and ids through an
    event it subscribes to and acks every command it predicts."""
    ctx = zmq.asyncio.Context()
    try:
        silent = setup.raw(ctx, "table")  # takes table's commands, never acks
        assert decode_command(
            await say_hello(silent, "table", "t-silent", ("ackbus.Bye",)) or [b""]
        ) is (Command.WELCOME)
        mallory = setup.raw(ctx, "audit")
        assert decode_command(
            await say_hello(mallory, "audit", "m-1", (), ("ackbus.Hello",)) or [b""]
        ) is (Command.WELCOME)
        async with setup.endpoint("orders", "orders") as orders:
            pending = asyncio.ensure_future(
                asyncio.gather(*(orders.send(Bye(reason=str(i)), timeout=2.0) for i in range(10)))
            )
            await orders.publish(Hello(), wait_ack=False)
            frames = await asyncio.wait_for(mallory.recv_multipart(), 2)
            [event] = decode_messages(frames)
            token = event.peer
            ids: set[bytes] = set()
            while len(ids) < 10:
                frames = await asyncio.wait_for(silent.recv_multipart(), 2)
                ids.update(item.id for item in decode_messages(frames))
            await mallory.send_multipart([ACK_FRAME, token, b"".join(sorted(ids)), b""])
            reports = await asyncio.wait_for(pending, 10)
            assert [bool(r) for r in reports] == [False] * 10
    finally:
        ctx.destroy(0)


async def test_a_handler_sees_the_true_sender(setup: Setup) -> None:
    """A raw client with orders' key writes a victim's identity into its envelope."""
    table = Table(setup)
    ctx = zmq.asyncio.Context()
    try:
        async with table.ep:
            liar = setup.raw(ctx, "orders")
            assert (
                decode_command(await say_hello(liar, "orders", "o-raw") or [b""]) is Command.WELCOME
            )
            item = encode_message(
                b"\x07" * 16,
                "ackbus.Bye",
                Bye(reason="x").SerializeToString(),
                envelope=encode_envelope(Identity("table", "victim")),
            )
            await liar.send_multipart(encode_messages([(b"", [item])]))
            await eventually(lambda: len(table.senders) == 1, timeout=5)
            assert table.senders == [Identity("orders", "o-raw")]
    finally:
        ctx.destroy(0)


async def test_sighup_reads_the_file_again_without_dropping_connections(setup: Setup) -> None:
    ctx = zmq.asyncio.Context()
    try:
        async with Table(setup).ep, setup.endpoint("orders", "orders") as orders:
            audit = setup.raw(ctx, "audit")
            assert refusal_of(await say_hello(audit, "audit-2", "a-2"))[0] == "UNAUTHORIZED"
            setup.access.write_text(
                ACCESS.replace('services = ["audit"]', 'services = ["audit", "audit-2"]')
            )
            hub = setup.hub
            hub.send_signal(signal.SIGHUP)
            answer = None
            for _ in range(20):  # the hub reads it on its loop, a moment later
                answer = await say_hello(audit, "audit-2", "a-2")
                if answer is not None and decode_command(answer) is Command.WELCOME:
                    break
                await asyncio.sleep(0.1)
            assert answer is not None
            assert decode_command(answer) is Command.WELCOME
            assert await all_acked(orders, 5)  # the endpoints' connections stayed
            # A file broken meanwhile is logged; the rules read before stay.
            setup.access.write_text("[clients.orders\n")
            hub.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert await all_acked(orders, 5)
            assert refusal_of(await say_hello(audit, "table", "t-x"))[0] == "UNAUTHORIZED"
    finally:
        ctx.destroy(0)


def test_a_bad_access_file_stops_the_hub_with_one_line(tmp_path: Path) -> None:
    hub_dir, _, access, _ = make_setup(tmp_path)
    access.write_text('[clients.orders]\nservices = ["orders"]\nsend = "orders.*"\n')
    done = run_hub("--bind", "tcp://127.0.0.1:0", "--keys", str(hub_dir), "--access", str(access))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"ackbus hub: error: {access}: line 3 (clients.orders.send): clients.orders.send must "
        "be a list of non-empty strings, not 'orders.*'"
    ]
    done = run_hub("--bind", "tcp://127.0.0.1:0", "--access", str(access))
    assert done.returncode == 1
    assert "an access file needs keys" in done.stderr


async def test_the_refusals_of_many_messages_are_one_warning_line_a_minute(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ackbus.endpoint")
    async with Table(setup).ep, setup.endpoint("orders", "orders") as orders:
        reports = [await orders.send(Welcome(version=1), timeout=5) for _ in range(5)]
        assert all(isinstance(r.error, Unauthorized) for r in reports)
    refused = [r for r in caplog.records if " refused: " in r.getMessage()]
    assert len(refused) == 1  # the other four held back (the next line would count them)
    assert refused[0].message_id == reports[0].message_id.hex()  # type: ignore[attr-defined]
    assert refused[0].service == "orders"  # type: ignore[attr-defined]
    failed = [r for r in caplog.records if r.getMessage().startswith("delivery failed")]
    assert len(failed) == 5  # each failure is its own line, with its own fields
    assert [r.message_id for r in failed] == [r.message_id.hex() for r in reports]  # type: ignore[attr-defined]
