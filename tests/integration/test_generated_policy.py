"""A per-call ``policy=`` on a generated client replaces the rpc's schema policy for that
call, end to end: the endpoint retries (or not) as the given policy says.

The receiving handler stalls, so no ack ever comes back while it runs (a redelivery
of a message whose handler is still running is dropped, not acked). Under the schema
policy of ``poker.Table.StartHand`` (ack_timeout 0.5 s, 8 attempts) the sender
retries; under ``Policy(max_attempts=1, ...)`` it gives up after the one attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from ackbus import Context, DeliveryReport, OutcomeUnknown, Policy
from ackbus.blocking import BlockingEndpoint
from ackbus.endpoint import Endpoint
from ackbus.errors import AckTimeout
from helpers import HEARTBEAT, HubBus
from poker import lobby_ackbus, table_ackbus, table_pb2

ONE_SHOT = Policy(max_attempts=1, ack_timeout=0.2, deadline=1.0)
SETTLE = 5.0
"""Upper bound on any single await in these tests."""


class Stall:
    """Handler runs that never finish until released, so never ack."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        await asyncio.wait_for(self.release.wait(), SETTLE)


class StalledTable(table_ackbus.TableHandler):
    def __init__(self, stall: Stall) -> None:
        self.stall = stall

    async def on_start_hand(self, msg: table_pb2.StartHand, ctx: Context) -> None:
        await self.stall()

    async def on_get_table_state(
        self, msg: table_pb2.GetTableState, ctx: Context
    ) -> table_pb2.TableState:
        await self.stall()
        return table_pb2.TableState(table_id=msg.table_id)


class StalledAudit(lobby_ackbus.AuditHandler):
    def __init__(self, stall: Stall) -> None:
        self.stall = stall

    async def on_hand_started(self, msg: table_pb2.HandStarted, ctx: Context) -> None:
        await self.stall()


@dataclass
class Bus:
    stall: Stall
    receivers: tuple[Endpoint, Endpoint]
    client: table_ackbus.TableClient
    events: table_ackbus.TableEvents

    @property
    def duplicates(self) -> int:
        """Redeliveries the receivers saw: one per retry the sender made."""
        return sum(ep.stats.duplicates for ep in self.receivers)


@pytest.fixture
async def bus(memory_hub: HubBus) -> AsyncIterator[Bus]:
    stall = Stall()
    address, backend = memory_hub.address, memory_hub.backend
    async with (
        Endpoint("table", address, backend=backend, heartbeat=HEARTBEAT) as table,
        Endpoint("audit", address, backend=backend, heartbeat=HEARTBEAT) as audit,
        Endpoint("dealer", address, backend=backend, heartbeat=HEARTBEAT) as sender,
    ):
        table.register(StalledTable(stall))
        audit.register(StalledAudit(stall))
        await asyncio.sleep(0.05)  # the receivers' hellos reach the hub
        try:
            yield Bus(
                stall,
                (table, audit),
                table_ackbus.TableClient(sender),
                table_ackbus.TableEvents(sender),
            )
        finally:
            stall.release.set()


async def test_per_call_policy_ends_where_the_schema_policy_would_wait(bus: Bus) -> None:
    """The stalled handler holds its lease (IN_PROGRESS), so neither policy retries; the
    per-call one ends at its own deadline, the schema's at the call's timeout."""
    started = time.monotonic()
    once = await asyncio.wait_for(
        bus.client.send_start_hand(table_id="t1", policy=ONE_SHOT), SETTLE
    )
    took = time.monotonic() - started
    assert not once
    assert isinstance(once.error, AckTimeout), once.error  # OutcomeUnknown: it ran
    assert once.attempts == 1
    assert ONE_SHOT.deadline - 0.1 < took < ONE_SHOT.deadline + 0.3
    assert bus.duplicates == 0

    # The same call without policy= runs under the schema's (0.5 s per attempt, 8 attempts,
    # a 10 s deadline), capped here by timeout=1.2.
    started = time.monotonic()
    waited = await asyncio.wait_for(bus.client.send_start_hand(table_id="t2", timeout=1.2), SETTLE)
    took = time.monotonic() - started
    assert not waited
    assert waited.attempts == 1
    assert 1.1 < took < 1.5
    assert bus.stall.runs == 2  # one run per message


Call = Callable[[Bus, Policy], Awaitable[object]]


async def _send_message(p: Bus, policy: Policy) -> object:
    return await p.client.send_start_hand(table_pb2.StartHand(table_id="t"), policy=policy)


async def _request(p: Bus, policy: Policy) -> object:
    return await p.client.request_get_table_state(table_id="t", timeout=3.0, policy=policy)


async def _request_message(p: Bus, policy: Policy) -> object:
    msg = table_pb2.GetTableState(table_id="t")
    return await p.client.request_get_table_state(msg, timeout=3.0, policy=policy)


async def _publish(p: Bus, policy: Policy) -> object:
    return await p.events.publish_hand_started(table_id="t", policy=policy)


@pytest.mark.parametrize("call", [_send_message, _request, _request_message, _publish])
async def test_every_generated_method_passes_the_policy_on(call: Call, bus: Bus) -> None:
    """Under their schema policies these calls would wait 3 s or more; the per-call
    policy ends each at its deadline, after one attempt (the stalled handler holds its
    lease)."""
    started = time.monotonic()
    try:
        report = await asyncio.wait_for(call(bus, ONE_SHOT), SETTLE)
    except AckTimeout:
        pass  # request_* raises the failed report's error
    else:
        assert not report
        if call is not _publish:
            assert getattr(report, "attempts", None) == 1
    assert time.monotonic() - started < ONE_SHOT.deadline + 0.3
    await asyncio.sleep(0.3)  # time enough for a retry, had there been one
    assert bus.stall.runs == 1
    if call is not _publish:
        # An event's re-sends keep their schedule while a subscriber's handler runs
        # (its IN_PROGRESS frees the attempts without re-arming): they reach the running
        # handler as duplicates, answered without running it.
        assert bus.duplicates == 0


async def test_blocking_client_passes_the_policy_on(hub: str) -> None:
    """A blocking client in a worker thread; the hub stays on this test's loop."""
    seen: list[str] = []

    async def never_acks(msg: table_pb2.StartHand, ctx: Context) -> None:
        seen.append(msg.table_id)
        await asyncio.sleep(SETTLE)

    def blocking_side() -> tuple[DeliveryReport, DeliveryReport, int]:
        with (
            BlockingEndpoint("table", hub, heartbeat=HEARTBEAT) as receiver,
            BlockingEndpoint("dealer", hub, heartbeat=HEARTBEAT) as sender,
        ):
            receiver.register_handler(table_pb2.StartHand, never_acks)
            time.sleep(0.05)  # the table's hello reaches the hub
            client = table_ackbus.TableBlockingClient(sender)
            once = client.send_start_hand(table_id="b1", policy=ONE_SHOT)
            waited = client.send_start_hand(table_id="b2", policy=ONE_SHOT.with_(deadline=1.2))
            return once, waited, receiver.stats.duplicates

    once, waited, duplicates = await asyncio.wait_for(asyncio.to_thread(blocking_side), 2 * SETTLE)
    # It reached the handler and no ack came: not a plain timeout, outcome unknown.
    assert (once.attempts, type(once.error)) == (1, OutcomeUnknown)
    # The handler held its lease: one attempt each, the policy's deadline passed on.
    assert (waited.attempts, type(waited.error)) == (1, OutcomeUnknown)
    assert duplicates == 0
    assert seen == ["b1", "b2"]
