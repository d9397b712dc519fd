"""The send window: senders wait in line for room, one woken per settled message.

Over the in-memory transport (the line is endpoint logic, not socket behaviour), so the
counts below are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import helpers
import pytest
from ackbus import (
    ClosedError,
    Context,
    DeliveryReport,
    LocalProtocolError,
    Policy,
    SendWindowTimeout,
)
from ackbus.endpoint import Endpoint
from ackbus.wire_pb2 import Bye

FAST = helpers.FAST.with_(ack_timeout=0.5)
T = 5.0


Pair = Callable[..., Awaitable[Endpoint]]


async def quick(msg: Bye, ctx: Context) -> None:
    return None


def held(reason: str, gate: asyncio.Event) -> Callable[[Bye, Context], Awaitable[None]]:
    """A handler that holds the message with this reason until ``gate`` is set."""

    async def handler(msg: Bye, ctx: Context) -> None:
        if msg.reason == reason:
            await gate.wait()

    return handler


@pytest.fixture
async def pair(memory_hub: helpers.HubBus) -> AsyncIterator[Pair]:
    """``await pair(handler, window=...)``: a started dealer sending through a hub to a
    started table whose ``Bye`` handler is ``handler``."""
    address, backend = memory_hub.address, memory_hub.backend
    made: list[Endpoint] = []

    async def make(handler: Any, window: int, policy: Policy = FAST) -> Endpoint:
        table = Endpoint("table", address, backend=backend, policy=policy)
        table.register_handler(Bye, handler)
        dealer = Endpoint("dealer", address, backend=backend, policy=policy, window=window)
        made.extend((table, dealer))
        async with asyncio.timeout(T):
            await table.start()
            await dealer.start()
        return dealer

    try:
        yield make
    finally:
        for ep in made:
            await ep.close()


async def test_concurrent_senders_are_woken_once_each_not_once_per_ack(
    pair: Pair,
) -> None:
    dealer = await pair(quick, window=4)
    async with asyncio.timeout(T):
        loop = asyncio.get_running_loop()
        created = 0
        real = loop.create_future

        def counting() -> asyncio.Future[Any]:
            nonlocal created
            created += 1
            return real()

        loop.create_future = counting  # type: ignore[method-assign]
        try:
            n = 200
            reports = await asyncio.gather(
                *(dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(n))
            )
            for r in reports:
                await r.wait(T)
        finally:
            del loop.create_future  # back to the class's method
    assert all(reports)
    # One future per send that had to wait in line (and a few for the rest of the run).
    # Waking every waiter on every ack, as before, made about n * n / 2 of them.
    assert created < 2 * n, created


async def test_the_line_is_first_come_first_served(
    pair: Pair,
) -> None:
    order: list[str] = []

    async def note(msg: Bye, ctx: Context) -> None:
        order.append(msg.reason)

    dealer = await pair(note, window=1)
    async with asyncio.timeout(T):
        reports = await asyncio.gather(
            *(dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(30))
        )
        for r in reports:
            await r.wait(T)
    assert order == [str(i) for i in range(30)]


async def test_a_waiter_that_timed_out_does_not_hold_up_a_later_send(
    pair: Pair,
) -> None:
    gate = asyncio.Event()
    dealer = await pair(held("first", gate), window=1)
    async with asyncio.timeout(T):
        first = await dealer.send(Bye(reason="first"), wait_ack=False)
        with pytest.raises(SendWindowTimeout):
            await dealer.send(Bye(reason="second"), timeout=0.1)
        gate.set()
        await first.wait(T)
        assert first
    # The window is empty now; the timed-out waiter must not be a line to queue behind.
    async with asyncio.timeout(1.0):
        assert await dealer.send(Bye(reason="third"))


async def test_a_waiter_woken_then_cancelled_passes_its_turn_on(
    pair: Pair,
) -> None:
    gate = asyncio.Event()
    dealer = await pair(held("a", gate), window=1)
    async with asyncio.timeout(T):
        loop = asyncio.get_running_loop()
        a = await dealer.send(Bye(reason="a"), wait_ack=False)
        b = asyncio.create_task(dealer.send(Bye(reason="b"), wait_ack=False))
        c = asyncio.create_task(dealer.send(Bye(reason="c")))
        await asyncio.sleep(0.05)  # both wait in line behind a
        assert not b.done()
        assert not c.done()

        def cancel_b(_: DeliveryReport) -> None:
            # Runs as a settles, before b is woken: b's cancel then lands after its
            # wake-up, so b leaves the line holding the turn a freed.
            loop.call_soon(b.cancel)

        a.add_done_callback(cancel_b)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await b
    # Without the hand-over, c would wait for a slot no ack will ever free.
    async with asyncio.timeout(1.5):
        assert await c


async def test_a_recipient_the_wire_cannot_carry_is_refused_at_send(
    pair: Pair,
) -> None:
    dealer = await pair(quick, window=1)
    async with asyncio.timeout(T):
        for _ in range(2):  # refused every time, not remembered as checked
            with pytest.raises(LocalProtocolError, match="recipient"):
                await dealer.send(Bye(), to="no spaces allowed")
        assert dealer.pending == 0
        assert await dealer.send(Bye(), to="table")


async def test_messages_queued_in_the_tracker_go_out_as_soon_as_a_slot_frees(
    pair: Pair,
) -> None:
    """A message the tracker queued (window full when it was tracked: a resumed durable
    outbox, or a send that overtook a woken waiter) is sent on the ack that frees a slot,
    not when the next ack timeout fires (2 s here)."""
    dealer = await pair(quick, window=1, policy=Policy(ack_timeout=2.0, deadline=10.0))
    async with asyncio.timeout(T):
        dealer._window = 100  # the endpoint lets sends through; its tracker holds 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(5)]
        assert dealer._tracker.queued("ackbus.Bye") == 4
        for r in reports:
            await r.wait(T)
        assert all(reports)
        assert loop.time() - start < 1.0


async def test_a_woken_sender_finding_its_slot_taken_waits_again_rather_than_queue(
    pair: Pair,
) -> None:
    """The tracker hands a freed slot to a message it queued before anyone; a waiter woken
    for that slot must not then queue its own message behind it. Once one message was
    queued, every later one did (each freed slot went to the queue, each woken waiter
    refilled it): the tracker's slower path for every message."""
    dealer = await pair(quick, window=2)
    queued = 0
    submit = dealer._tracker.submit

    def counting(*args: Any) -> Any:
        nonlocal queued
        admit = submit(*args)
        queued += admit.name == "QUEUED"
        return admit

    dealer._tracker.submit = counting  # type: ignore[method-assign]
    async with asyncio.timeout(T):
        # One message queued in the tracker, as a resumed outbox leaves one.
        dealer._window = 3
        first = [await dealer.send(Bye(), wait_ack=False) for _ in range(3)]
        dealer._window = 2
        assert queued == 1
        reports = await asyncio.gather(*(dealer.send(Bye(), wait_ack=False) for _ in range(60)))
        for r in [*first, *reports]:
            await r.wait(T)
    assert all(reports)
    assert queued == 1, f"{queued - 1} more queued in the tracker behind woken waiters"


# -- the lines alone (_window.WindowLines) -------------------------------------------------


async def test_each_waiter_times_out_at_its_own_deadline_with_one_timer_per_line() -> None:
    """Deadlines in any order: each waiter fails at its own (not at the head's, not at
    the line's first timer), the others stay in line, and the line keeps one timer."""
    from ackbus._window import WindowLines

    loop = asyncio.get_running_loop()
    lines = WindowLines(lambda dest: SendWindowTimeout(f"full: {dest}"))
    start = loop.time()
    offsets = [0.90, 0.10, 0.50, 5.0]  # a later waiter may have an earlier deadline
    futs = [lines.enter("d", start + dt, loop)[0] for dt in offsets]
    line = lines.lines["d"]
    failed_at: dict[int, float] = {}
    for i, fut in enumerate(futs):
        fut.add_done_callback(lambda _, i=i: failed_at.setdefault(i, loop.time() - start))
    async with asyncio.timeout(T):
        await asyncio.wait(futs[:3])
    for i in range(3):
        assert isinstance(futs[i].exception(), SendWindowTimeout)
        # Never early; late only by the loop's own delay (far less than 5 s, the last
        # waiter's deadline, which a timer armed only for the line's head or for the
        # latest deadline would wait for).
        assert offsets[i] - 0.002 <= failed_at[i] < offsets[i] + 1.0, (i, failed_at)
    assert failed_at[1] < failed_at[2] < failed_at[0], failed_at  # each at its own
    assert not futs[3].done()
    assert line.timer is not None  # re-armed, and just one
    assert line.timer_at == start + 5.0
    lines.admit("d")  # the last waiter's turn
    assert futs[3].result() is None
    assert not lines
    assert line.timer.cancelled(), "an empty line drops its timer"


async def test_a_turn_skips_waiters_that_left_and_closing_fails_the_rest() -> None:
    from ackbus._window import WindowLines

    loop = asyncio.get_running_loop()
    lines = WindowLines(lambda dest: SendWindowTimeout(dest))
    a, b, c = (lines.enter("d", loop.time() + 5.0, loop)[0] for _ in range(3))
    a.cancel()
    lines.leave("d", a)  # cancelled while waiting: it just leaves
    lines.admit("d")
    assert b.done()
    assert not c.done()
    lines.leave("d", b)  # woken, then did not send: the turn passes on to c
    assert c.done()
    d, _ = lines.enter("e", loop.time() + 5.0, loop)
    lines.fail(ClosedError("closed"))
    assert isinstance(d.exception(), ClosedError)
    assert not lines


async def test_a_higher_priority_waiter_goes_first_and_waiting_long_enough_wins() -> None:
    from ackbus._window import PRIORITY_STEP, WindowLines

    loop = asyncio.get_running_loop()
    lines = WindowLines(lambda dest: SendWindowTimeout(dest))
    deadline = loop.time() + 60.0
    low = [lines.enter("d", deadline, loop)[0] for _ in range(3)]
    high, _ = lines.enter("d", deadline, loop, priority=9)
    lines.admit("d")
    assert high.done()
    assert not any(f.done() for f in low)
    lines.admit("d")
    assert low[0].done()
    assert not low[1].done()
    # Aging: a waiter that has waited longer than its gap in priority is worth goes
    # ahead of a newer, higher priority.
    await asyncio.sleep(2 * PRIORITY_STEP)
    newer, _ = lines.enter("d", deadline, loop, priority=1)
    lines.admit("d")
    assert low[1].done()
    assert not newer.done()
    lines.fail(ClosedError("closed"))


async def test_a_waiter_that_enters_again_keeps_its_place() -> None:
    from ackbus._window import WindowLines

    loop = asyncio.get_running_loop()
    lines = WindowLines(lambda dest: SendWindowTimeout(dest))
    deadline = loop.time() + 60.0
    first, place = lines.enter("d", deadline, loop)
    later, _ = lines.enter("d", deadline, loop)
    lines.admit("d")
    assert first.done()
    again, same = lines.enter("d", deadline, loop, place=place)  # its slot was taken
    assert same == place
    lines.admit("d")
    assert again.done()
    assert not later.done()
    lines.fail(ClosedError("closed"))


async def test_priority_never_puts_a_waiter_ahead_of_an_earlier_one_of_its_key() -> None:
    from ackbus._window import WindowLines

    loop = asyncio.get_running_loop()
    lines = WindowLines(lambda dest: SendWindowTimeout(dest))
    deadline = loop.time() + 60.0
    first, _ = lines.enter("d", deadline, loop, key=7)
    other, _ = lines.enter("d", deadline, loop)
    urgent, _ = lines.enter("d", deadline, loop, priority=9, key=7)  # same key: behind first
    keyless, _ = lines.enter("d", deadline, loop, priority=9)  # no key: ahead of all
    order = []
    for _ in range(4):
        lines.admit("d")
        order += [n for n, f in (("first", first), ("other", other), ("urgent", urgent),
                                 ("keyless", keyless)) if f.done() and n not in order]  # fmt: skip
    assert order[0] == "keyless"  # priority still orders the line
    assert order.index("first") < order.index("urgent")  # but not within a key
    for _ in range(2):
        lines.key_left(7)
    assert not lines._keys


async def test_keyed_sends_through_a_full_window_run_in_send_order(pair: Pair) -> None:
    ran: list[str] = []

    async def handler(msg: Bye, ctx: Context) -> None:
        ran.append(msg.reason)

    dealer = await pair(handler, window=1)
    async with asyncio.timeout(T):
        sends = [
            asyncio.create_task(dealer.send(Bye(reason=str(n)), key="k", priority=n % 3 * 4))
            for n in range(12)
        ]
        reports = await asyncio.gather(*sends)
    assert all(reports)
    assert ran == [str(n) for n in range(12)]
