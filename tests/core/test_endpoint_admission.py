"""A receiver's own limit: at most ``max_concurrency`` handlers run at once (the hub's
counts start at zero after a restart, so the receiver enforces it too); the messages
beyond it wait in the protocol, by priority with aging, hold their lease like running
ones, and start (``EndpointIO.start_waiting``) as running ones end."""

from __future__ import annotations

from typing import Any

from ackbus.core import Outcome
from ackbus.core.endpoint_protocol import AckReply, EndpointProtocol
from ackbus.core.priority import PRIORITY_STEP

from .test_endpoint_protocol import Item, Recorder, make


class Starter(Recorder):
    """Records the messages the protocol starts later, as ``("start", id)``."""

    def start_waiting(self, hub: int, item: Any, now: float) -> None:
        self.actions.append(("start", item.id))


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def receiver(limit: int) -> tuple[EndpointProtocol, Starter]:
    proto, _ = make(max_concurrency=limit)
    io = Starter()
    proto.io = io
    return proto, io


def receive(proto: EndpointProtocol, items: list[Item], now: float) -> list[bytes]:
    """One batch; the ids whose handlers start now."""
    proto.begin_batch(0, now)
    try:
        return [item.id for item in items if proto.accept(0, item, now)]
    finally:
        proto.end_batch()


def test_messages_beyond_the_limit_wait_and_start_as_running_ones_end() -> None:
    proto, io = receiver(2)
    items = [Item(mid(n)) for n in range(4)]
    assert receive(proto, items, 0.0) == [mid(0), mid(1)]
    assert (proto.running_count(), proto.waiting_count()) == (4, 2)
    assert proto.stats.waited == 2
    io.take()
    proto.handled(0, items[0], 0.5)
    assert sorted(io.take()) == [("acks", 0, [mid(0)], b"p1"), ("start", mid(2))]
    proto.abandon(mid(1))
    proto.tick(0.6)  # an abandoned run frees its slot for the next tick
    assert ("start", mid(3)) in io.take()
    assert proto.waiting_count() == 0


def test_handlers_that_return_in_their_batch_do_not_count_against_the_limit() -> None:
    proto, _ = receiver(1)
    proto.begin_batch(0, 0.0)
    for n in range(5):
        assert proto.accept(0, Item(mid(n)), 0.0)
        proto.handled_ok(mid(n), b"p1")
    proto.end_batch()
    assert proto.waiting_count() == 0


def test_waiting_messages_start_by_priority_with_aging() -> None:
    proto, io = receiver(1)
    receive(proto, [Item(mid(0))], 0.0)  # runs
    receive(proto, [Item(mid(n)) for n in range(1, 4)], 0.0)
    receive(proto, [Item(mid(9), priority=9)], 0.5)  # 0.9 s of priority: ahead of them
    receive(proto, [Item(mid(8), priority=9)], 9 * PRIORITY_STEP + 0.2)  # aged ones first
    io.take()
    started = [mid(0)]
    for n in range(5):
        proto.handled(0, Item(started[-1]), 2.0 + n)
        started += [a[1] for a in io.take() if a[0] == "start"]
    assert started[1:] == [mid(9), mid(1), mid(2), mid(3), mid(8)]


def test_a_waiting_message_holds_its_lease_and_a_retry_of_it_hears_in_progress() -> None:
    proto, io = receiver(1)
    receive(proto, [Item(mid(0)), Item(mid(1))], 0.0)
    io.take()
    proto.tick(proto.progress)
    notices = [a[2].msg_id for a in io.take() if a[0] == "ack"]
    assert notices == [mid(0), mid(1)]
    assert receive(proto, [Item(mid(1), attempt=2)], 0.3) == []
    (notice,) = io.take()
    ack: AckReply = notice[2]
    assert (ack.msg_id, ack.outcome) == (mid(1), Outcome.IN_PROGRESS)
    assert proto.waiting_count() == 1  # held once


def test_closing_never_starts_a_waiting_message() -> None:
    proto, io = receiver(1)
    items = [Item(mid(0)), Item(mid(1))]
    receive(proto, items, 0.0)
    proto.close([], 0.1)
    proto.handled(0, items[0], 0.2)
    assert [a for a in io.take() if a[0] == "start"] == []
    assert (proto.running_count(), proto.waiting_count()) == (0, 0)
    assert proto.deduper.running_count() == 0
