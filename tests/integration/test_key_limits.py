"""Instances per key and same-key takeover (issue 18, items 4 and 6), against a real
`ackbus hub --keys DIR` process over TCP on 127.0.0.1 with CURVE, raw ZeroMQ clients
holding enrolled keys, and real endpoints.

- One key may register at most ``--max-instances-per-key`` instances at once: one key
  (stolen, or a deployment in a crash loop) cannot take every slot of the hub.
- An instance id registered on a live connection is taken over by a connection with the
  same key (a restarted process whose old connection has not dropped yet); the displaced
  connection is told so (NOT_REGISTERED) and a real endpoint says HELLO again. Another
  key claiming that id is refused (IN_USE).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from ackbus import Context
from ackbus.hub import Hub
from ackbus.wire import DEFAULT_LIMITS, Command, decode_command, encode_bye
from ackbus.wire_pb2 import Bye
from curve_keys import Keys, enroll, refusal_of
from helpers import eventually, say_hello
from proc_harness import Procs, free_port

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    hub_dir, hub_key, secrets = enroll(tmp_path, ("table", "audit", "orders"))
    return Keys(f"tcp://127.0.0.1:{free_port()}", hub_dir, hub_key, secrets)


def welcomed(answer: list[bytes] | None) -> bool:
    assert answer is not None, "no answer"
    return decode_command(answer) is Command.WELCOME


async def next_refusal(sock: zmq.asyncio.Socket, timeout: float = 5) -> tuple[str, str]:
    """The next REFUSAL ``sock`` receives (heartbeats skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            frames = list(await sock.recv_multipart())
            if decode_command(frames) is Command.REFUSAL:
                return refusal_of(frames)


async def test_a_key_registers_at_most_its_limit_of_instances(
    procs: Procs, keys: Keys, tmp_path: Path
) -> None:
    log_file = tmp_path / "hub.log"
    hub = procs.start(
        "-m",
        "ackbus.cli",
        "hub",
        "--bind",
        keys.address,
        "--keys",
        str(keys.hub_dir),
        "--max-instances-per-key",
        "2",
        "--heartbeat",
        "0.25",
        ready=b"listening on " + keys.address.encode(),
        stderr=log_file,
    )
    ctx = zmq.asyncio.Context()
    try:
        a, b, c, d = (keys.raw(ctx, "table") for _ in range(4))
        other = keys.raw(ctx, "audit")
        assert welcomed(await say_hello(a, "table", "t-1"))
        assert welcomed(await say_hello(b, "table", "t-2"))
        code, text = refusal_of(await say_hello(c, "table", "t-3"))
        assert code == "LIMIT"
        assert "key 'table' has 2 instances registered" in text
        assert "max_instances_per_key" in text
        code, _ = refusal_of(await say_hello(d, "table-canary", "t-4"))  # any service
        assert code == "LIMIT"
        # Saying HELLO again on a registered connection adds no instance.
        assert welcomed(await say_hello(a, "table", "t-1"))
        # Another key is not affected.
        assert welcomed(await say_hello(other, "audit", "a-1"))
        # One leaves: a new one gets in.
        await b.send_multipart(encode_bye("done"))
        answer = None
        async with asyncio.timeout(10):
            while answer is None or not welcomed(answer):
                await asyncio.sleep(0.05)
                answer = await say_hello(c, "table", "t-3")
    finally:
        ctx.destroy(0)
    procs.kill(hub)
    log = log_file.read_text(errors="replace")
    lines = [line for line in log.splitlines() if "max_instances_per_key, --max" in line]
    assert len(lines) == 1, lines  # two refusals of key 'table', one line a minute
    assert "key 'table'" in lines[0]


async def test_the_same_key_takes_an_instance_over_and_another_key_is_refused(
    procs: Procs, keys: Keys
) -> None:
    """Raw clients: A (key table) registered as table/t-1; B, another connection with the
    same key, says HELLO as table/t-1 while A's connection is live: B is welcomed and A is
    told it was displaced; C (key audit) claiming table/t-1 is refused IN_USE."""
    procs.keyed_hub(keys.address, keys.hub_dir, "--heartbeat", "0.25")
    ctx = zmq.asyncio.Context()
    try:
        a, b = keys.raw(ctx, "table"), keys.raw(ctx, "table")
        c = keys.raw(ctx, "audit")
        assert welcomed(await say_hello(a, "table", "t-1", ("ackbus.Bye",)))
        assert welcomed(await say_hello(b, "table", "t-1", ("ackbus.Bye",)))
        code, text = await next_refusal(a)
        assert code == "NOT_REGISTERED"
        assert "displaced by a new connection of table/t-1" in text
        code, text = refusal_of(await say_hello(c, "table", "t-1", ("ackbus.Bye",)))
        assert code == "IN_USE"
        assert "registered on another live connection" in text
    finally:
        ctx.destroy(0)


async def test_a_displaced_endpoint_says_hello_again_and_serves(procs: Procs, keys: Keys) -> None:
    """A real endpoint (key table) is taken over by a raw client with the same key and
    its instance id, which then closes: the endpoint, told it was displaced, says HELLO
    again and handles every command sent after; a raw client with another key claiming
    its id is refused and changes nothing."""
    procs.keyed_hub(keys.address, keys.hub_dir, "--heartbeat", "0.25")
    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)

    table = keys.endpoint("table", "table")
    table.register_handler(Bye, on_bye)
    ctx = zmq.asyncio.Context()
    try:
        async with table, keys.endpoint("orders", "orders") as orders:
            instance = table.identity.instance
            assert await orders.send(Bye(reason="before"), timeout=5)
            stranger = keys.raw(ctx, "audit")
            code, _ = refusal_of(await say_hello(stranger, "table", instance, ("ackbus.Bye",)))
            assert code == "IN_USE"
            thief = keys.raw(ctx, "table")
            assert welcomed(await say_hello(thief, "table", instance, ("ackbus.Bye",)))
            # Told, the endpoint says HELLO again with its key: it takes the id back, and
            # the raw client is the one displaced now.
            code, _ = await next_refusal(thief)
            assert code == "NOT_REGISTERED"
            thief.close(0)
            reports = await asyncio.gather(
                *(orders.send(Bye(reason=str(i)), timeout=10) for i in range(20))
            )
            assert all(reports), [r.error for r in reports if not r]
            await eventually(lambda: len(got) == 21, timeout=5)
            assert sorted(got) == sorted(["before", *(str(i) for i in range(20))])
    finally:
        ctx.destroy(0)


async def test_the_key_limit_is_counted_and_configurable_on_the_hub(keys: Keys) -> None:
    async with Hub(keys.address, keys=keys.hub_dir, max_instances_per_key=1) as hub:
        assert hub.limits.max_instances_per_key == 1
        ctx = zmq.asyncio.Context()
        try:
            a, b = keys.raw(ctx, "table"), keys.raw(ctx, "table")
            assert welcomed(await say_hello(a, "table", "t-1"))
            code, text = refusal_of(await say_hello(b, "table", "t-2"))
            assert code == "LIMIT"
            assert "key 'table' has 1 instances registered" in text
            assert hub.stats.key_limit == 1
            assert hub.stats.refused["LIMIT"] == 1
            assert hub._proto.instances_of("table") == 1
            await a.send_multipart(encode_bye("done"))
            await eventually(lambda: hub._proto.instances_of("table") == 0)
            assert welcomed(await say_hello(b, "table", "t-2"))
        finally:
            ctx.destroy(0)
    assert DEFAULT_LIMITS.max_instances_per_key == 64
