"""PostgreSQL restarted with an immediate shutdown (a crash: recovery at the next start)
while a durable sender and a durable receiver stream through it: nothing acked that was
not committed, every message ``send`` accepted delivered, and its effect once; traffic
goes on once the server is back, and each instance's claim (its advisory lock, which
died with the session that held it) is taken again, so a second process claiming it is
refused again.

The server is this session's own (tests/support/pg_server.py), stopped with SIGQUIT (what
``pg_ctl stop -m immediate`` sends) and started again on the same data, port and socket.
"""

from __future__ import annotations

import asyncio
import signal

import helpers
import psycopg
import pytest
from ackbus import Context, DeliveryReport, StoreError
from ackbus.endpoint import Endpoint
from ackbus.store import PostgresStore
from ackbus.store._pg_schema import LOCK_CLASS
from ackbus.wire_pb2 import Bye
from pg_server import PgServer

pytestmark = pytest.mark.slow

POLICY = helpers.FAST.with_(ack_timeout=0.5, max_attempts=1000, backoff_cap=0.5, deadline=60.0)
EFFECTS = "CREATE TABLE effects (msg_id bytea NOT NULL)"


def held(url: str, service: str, instance: str) -> bool:
    """Whether some session holds ``instance``'s claim: a lock probe, let go at once."""
    key = f"ackbus/{service}/{instance}"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, key)
            ).fetchone()
            if row and row[0]:
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, key))
                return False
            return True
    except psycopg.OperationalError:  # the server is not back yet
        return False


async def until_held(url: str, service: str, instance: str, timeout: float) -> float:
    """Seconds until ``instance``'s claim is held again."""
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(held, url, service, instance):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return asyncio.get_running_loop().time() - started


async def test_an_immediate_restart_mid_stream_loses_and_doubles_nothing_and_traffic_goes_on(
    memory_hub: helpers.HubBus, pg_server: PgServer
) -> None:
    url = pg_server.url(pg_server.new_database())
    PostgresStore(url).execute_script(EFFECTS)
    runs = 0

    async def on_bye(msg: Bye, ctx: Context) -> None:
        nonlocal runs
        runs += 1
        assert ctx.tx is not None
        await ctx.tx.execute("INSERT INTO effects VALUES (%s)", (ctx.message_id,))

    def endpoint(service: str) -> Endpoint:
        return Endpoint(
            service,
            memory_hub.address,
            backend=memory_hub.backend,
            store=url,
            policy=POLICY,
            heartbeat=helpers.HEARTBEAT,
        )

    accepted: list[DeliveryReport] = []
    refused = 0
    receiver = endpoint("table")
    receiver.register_handler(Bye, on_bye)
    async with receiver, endpoint("dealer") as dealer:
        await asyncio.sleep(0.05)

        async def stream(n: int) -> None:
            nonlocal refused
            for i in range(n):
                try:
                    accepted.append(await dealer.send(Bye(reason=str(i)), wait_ack=False))
                except StoreError:
                    refused += 1  # its commit failed: send said so; never delivered
                if i % 10 == 9:
                    await asyncio.sleep(0.02)

        claims = [("table", receiver.identity.instance), ("dealer", dealer.identity.instance)]
        assert all(held(url, *c) for c in claims)

        async def restart() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(pg_server.kill, signal.SIGQUIT)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(pg_server.start)

        async with asyncio.timeout(POLICY.deadline + 30):
            await asyncio.gather(stream(300), restart())
            # The server is back: the claims come back within about a second, and a
            # second process claiming either instance is refused again.
            for service, instance in claims:
                took = await until_held(url, service, instance, 10.0)
                print(f"{service}'s claim held again {took:.1f} s after the restart")
            for service, instance in claims:
                with pytest.raises(StoreError, match="in use by another live process"):
                    PostgresStore(url).claim(service, instance)
            during = len(accepted)
            await stream(200)  # traffic goes on
            after = accepted[during:]
            for r in accepted:
                await r.wait(POLICY.deadline + 5)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT msg_id) FROM effects").fetchone()
        ids = {bytes(r[0]) for r in conn.execute("SELECT msg_id FROM effects")}
    failed = [r for r in accepted if not r]
    print(f"accepted {len(accepted)}, refused {refused}, failed {len(failed)}, runs {runs}")
    assert not failed, failed[:3]
    assert len(after) == 200, "a send after the server came back was refused"
    assert all(r.attempts == 1 for r in after[-100:]), "traffic did not settle back"
    assert row == (len(accepted), len(accepted)), "an effect is missing or doubled"
    assert ids == {r.message_id for r in accepted}
