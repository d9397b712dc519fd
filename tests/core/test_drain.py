"""A draining endpoint (``Endpoint.drain``, ``ackbus run`` on SIGTERM): registered again
with no handlers, it turns new messages away (NO_ROUTE, so their senders route them
elsewhere), while the messages it runs go on, are acked, and a copy of one of them is
answered as before; a HELLO answered afterwards tells the driver the hub read the acks."""

from __future__ import annotations

from ackbus.core import Outcome

from .test_endpoint_protocol import Item, make


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_draining_says_hello_with_no_handlers_and_turns_new_messages_away() -> None:
    proto, io = make(hubs=2)
    proto.begin_batch(0, 0.0)
    assert proto.accept(0, Item(mid(1)), 0.0)  # running when the drain begins
    proto.end_batch()
    proto.drain(1.0)
    assert io.take() == [("hello", 0), ("hello", 1)]
    assert (proto.commands, proto.events, proto.implements) == ((), (), ())
    assert not proto.answered(0)

    proto.begin_batch(0, 1.1)
    assert not proto.accept(0, Item(mid(2)), 1.1)  # new: turned away
    assert not proto.accept(0, Item(mid(1), attempt=2), 1.1)  # a copy of the running one
    proto.end_batch()
    (turned, copy) = io.take()
    assert turned[0] == "ack"
    assert turned[2].msg_id == mid(2)
    assert turned[2].outcome == Outcome.NO_ROUTE
    assert turned[2].error.message.endswith("is shutting down")
    assert copy[0] == "ack"
    assert copy[2].outcome == Outcome.IN_PROGRESS
    assert proto.running_count() == 1

    proto.handled(0, Item(mid(1)), 1.2)  # the running one ends: acked as ever
    assert io.take() == [("acks", 0, [mid(1)], b"p1")]
    assert proto.running_count() == 0

    proto.hello_again(1.3)
    assert io.take() == [("hello", 0), ("hello", 1)]
    proto.on_welcome(0, 1000, 1.4)
    assert proto.answered(0)
    assert not proto.answered(1)


def test_handlers_registered_while_draining_are_not_announced() -> None:
    proto, io = make()
    proto.drain(0.0)
    proto.set_types(["svc.Do", "svc.New"], [], 0.1)
    assert proto.commands == ()
    assert io.take() == [("hello", 0), ("hello", 0)]
