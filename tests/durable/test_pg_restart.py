"""PostgreSQL restarted with an immediate shutdown (a crash: recovery at the next start)
while a durable sender and a durable receiver stream through it: nothing acked that was
not committed, every message ``send`` accepted delivered, and its effect once.

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
from ackbus.wire_pb2 import Bye
from pg_server import PgServer

pytestmark = pytest.mark.slow

POLICY = helpers.FAST.with_(ack_timeout=0.5, max_attempts=1000, backoff_cap=0.5, deadline=60.0)
EFFECTS = "CREATE TABLE effects (msg_id bytea NOT NULL)"


async def test_an_immediate_restart_of_postgresql_mid_stream_loses_and_doubles_nothing(
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

        async def restart() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(pg_server.kill, signal.SIGQUIT)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(pg_server.start)

        async with asyncio.timeout(POLICY.deadline + 30):
            await asyncio.gather(stream(300), restart())
            for r in accepted:
                await r.wait(POLICY.deadline + 5)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT msg_id) FROM effects").fetchone()
        ids = {bytes(r[0]) for r in conn.execute("SELECT msg_id FROM effects")}
    failed = [r for r in accepted if not r]
    print(f"accepted {len(accepted)}, refused {refused}, failed {len(failed)}, runs {runs}")
    assert not failed, failed[:3]
    assert row == (len(accepted), len(accepted)), "an effect is missing or doubled"
    assert ids == {r.message_id for r in accepted}
