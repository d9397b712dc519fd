"""The endpoint protocol alone: events and ``now`` in, actions out through a recording IO."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from ackbus import Identity, Policy, Reject, RetryLater
from ackbus.core import Outcome, RemoteError
from ackbus.core.endpoint_protocol import FLAG_REQUEST, AckReply, EndpointProtocol
from ackbus.core.tracker import Completion
from ackbus.errors import AckTimeout, Cancelled, DeliveryError, NoRoute, OutcomeUnknown
from ackbus.wire import FLAG_REQUEST as WIRE_FLAG_REQUEST
from ackbus.wire import NOT_REGISTERED

ME = Identity("svc", "me")
BOB = Identity("other", "b")
P = Policy(ack_timeout=1.0, max_attempts=3, backoff_base=0.5, backoff_cap=1.0, jitter=0.0)


@dataclass
class Item:
    id: bytes
    type: str = "svc.Do"
    peer: bytes = b"p1"
    flags: int = 0
    deadline_ns: int = 0
    attempt: int = 1
    priority: int = 0
    key: int = 0


@dataclass
class Recorder:
    """An EndpointIO that records every action as a tuple."""

    actions: list[tuple[Any, ...]] = field(default_factory=list)

    def transmit(self, hub: int, msg_id: bytes, attempt: int, now: float) -> None:
        self.actions.append(("transmit", hub, msg_id, attempt))

    def send_acks(self, hub: int, msg_ids: list[bytes], peer: bytes) -> None:
        self.actions.append(("acks", hub, list(msg_ids), peer))

    def send_ack(self, hub: int, ack: AckReply, peer: bytes) -> None:
        self.actions.append(("ack", hub, ack, peer))

    def send_hello(self, hub: int) -> None:
        self.actions.append(("hello", hub))

    def send_heartbeat(self, hub: int) -> None:
        self.actions.append(("heartbeat", hub))

    def acked(self, completions: Sequence[Completion]) -> None:
        self.actions.append(("acked", [c.msg_id for c in completions]))

    def failed(self, completion: Completion, error: DeliveryError) -> None:
        self.actions.append(("failed", completion.msg_id, error))

    def hub_silent(self, hub: int, silence: float) -> None:
        self.actions.append(("silent", hub))

    def take(self) -> list[tuple[Any, ...]]:
        out, self.actions = self.actions, []
        return out


def make(hubs: int = 1, **kw: Any) -> tuple[EndpointProtocol, Recorder]:
    io = Recorder()
    proto = EndpointProtocol(ME, io, **kw)
    for _ in range(hubs):
        proto.connected(proto.add_hub(), 0.0)
    proto.set_types(["svc.Do"], ["ev.Tick"], 0.0)
    for hub in range(hubs):
        proto.on_welcome(hub, 1000, 0.0)
    io.take()
    return proto, io


def test_the_request_flag_is_the_wires() -> None:
    assert FLAG_REQUEST == WIRE_FLAG_REQUEST


def test_registering_types_says_hello_on_every_hub() -> None:
    proto, io = make(hubs=2)
    proto.set_types(["svc.Do", "svc.Other"], [], 0.0)
    assert io.take() == [("hello", 0), ("hello", 1)]
    assert proto.commands == ("svc.Do", "svc.Other")


def test_a_sent_message_is_transmitted_round_robin_over_welcomed_hubs() -> None:
    proto, io = make(hubs=3)
    proto.on_bye(1)
    for n in range(4):
        proto.submit(bytes([n]) * 16, "x.Do", "x.Do", P, 0.0)
    hubs = [a[1] for a in io.take()]
    assert 1 not in hubs
    assert set(hubs) == {0, 2}


def test_an_unacked_message_is_retried_then_fails_with_its_reason() -> None:
    proto, io = make()
    mid = b"m" * 16
    proto.submit(mid, "x.Do", "x.Do", P, 0.0)
    assert io.take() == [("transmit", 0, mid, 1)]
    proto.tick(1.0)  # the ack timeout: a backoff of 0.5 s, then attempt 2
    proto.tick(1.5)
    assert [a for a in io.take() if a[0] == "transmit"] == [("transmit", 0, mid, 2)]
    assert proto.stats.retries == 1
    for t in (2.5, 3.0, 4.0, 10.0):
        proto.begin_batch(0, t)  # the hub's heartbeats: it is alive, nobody acks
        proto.end_batch()
        proto.tick(t)
    failed = [a for a in io.take() if a[0] == "failed"]
    assert len(failed) == 1
    assert "no acknowledgement after 3 attempts" in str(failed[0][2])
    assert isinstance(failed[0][2], OutcomeUnknown)
    assert proto.stats.failed["outcome-unknown"] == 1


def test_plain_acks_settle_and_count() -> None:
    proto, io = make()
    ids = [bytes([n]) * 16 for n in range(3)]
    for mid in ids:
        proto.submit(mid, "x.Do", "x.Do", P, 0.0)
    proto.on_routed(ids[0], ["other"], 0.05)  # the hub: x.Do is other's
    io.take()
    proto.on_acks(BOB, ids[:2], [AckReply(ids[2], Outcome.DUPLICATE, BOB)], 0.1)
    assert io.take() == [("acked", ids[:2]), ("acked", [ids[2]])]
    assert proto.stats.acked == 3


def test_acks_count_only_from_the_service_addressed() -> None:
    proto, io = make()
    hub = Identity("hub", "h1")
    proto.on_welcome(0, 1000, 0.0, hub)
    by_type, named, event = b"t" * 16, b"n" * 16, b"e" * 16
    proto.submit(by_type, "x.Do", "x.Do", P, 0.0)
    proto.submit(named, "x.Do", "other/b", P, 0.0)
    proto.submit(event, "ev.Tick", "ev.Tick", P, 0.0, event=True)
    io.take()
    mallory = Identity("mallory", "m")
    # Before the hub named x.Do's service, and from a service not addressed: ignored.
    proto.on_acks(BOB, [by_type], [], 0.1)
    proto.on_acks(mallory, [by_type, named, event], [AckReply(named, Outcome.OK, mallory)], 0.1)
    proto.on_routed(event, ["audit"], 0.1)
    proto.on_routed(by_type, ["other"], 0.1)
    proto.on_acks(mallory, [by_type, event], [AckReply(by_type, Outcome.REJECTED, mallory)], 0.2)
    assert io.take() == []
    assert proto.tracker.foreign == 8
    # A hub's answers count for any message; the addressed services' acks settle them.
    proto.on_ack(AckReply(by_type, Outcome.RETRY_LATER, hub, retry_after=5.0), 0.3)
    proto.on_acks(BOB, [by_type, named], [], 0.4)
    proto.on_acks(Identity("audit", "a"), [event], [], 0.4)
    assert io.take() == [("acked", [by_type, named]), ("acked", [event])]


def test_a_no_route_failure_says_why_the_hub_found_none() -> None:
    proto, io = make()
    mid = b"n" * 16
    proto.submit(mid, "x.Do", "x.Do", P.with_(deadline=2.0), 0.0)
    error = RemoteError("NoRoute", "no instance of x is registered")
    proto.on_ack(AckReply(mid, Outcome.NO_ROUTE, None, error, attempt=1), 0.1)
    failed: Any = None
    for t in (0.5, 0.6, 1.0, 1.5, 2.0, 3.0):
        proto.tick(t)
        for action in io.take():
            if action[0] == "transmit":  # every retry answered NO_ROUTE too
                proto.on_ack(AckReply(mid, Outcome.NO_ROUTE, None, error, attempt=action[3]), t)
            elif action[0] == "failed":
                failed = action
    assert isinstance(failed[2], NoRoute)
    assert not isinstance(failed[2], OutcomeUnknown)
    assert "no instance of x is registered" in str(failed[2])


def test_a_failure_after_an_unanswered_attempt_says_outcome_unknown_not_no_route() -> None:
    # The case: attempt 1 reached a receiver whose loop then stalled (no ack);
    # the hub declared it dead and answered every retry NO_ROUTE.
    proto, io = make()
    mid = b"u" * 16
    proto.submit(mid, "x.Do", "x.Do", P.with_(deadline=10.0), 0.0)
    error = RemoteError("NoRoute", "no live service handles x.Do")
    failed: Any = None
    for t in (1.0, 1.5, 1.6, 2.0, 2.6, 5.0):
        proto.tick(t)
        for action in io.take():
            if action[0] == "transmit" and action[3] > 1:
                proto.on_ack(AckReply(mid, Outcome.NO_ROUTE, None, error, attempt=action[3]), t)
            elif action[0] == "failed":
                failed = action
    assert failed is not None
    err = failed[2]
    assert isinstance(err, OutcomeUnknown)
    assert isinstance(err, AckTimeout)
    assert not isinstance(err, NoRoute)
    assert "outcome unknown" in str(err)
    assert "may have run" in str(err)
    assert "no live service handles x.Do" in str(err)  # what the hub said last
    assert proto.stats.failed["outcome-unknown"] == 1


def test_unknown_type_and_expired_items_are_answered_without_running() -> None:
    proto, io = make()
    assert not proto.accept(0, Item(b"a" * 16, type="nope.Do"), 0.0)
    assert not proto.accept(0, Item(b"b" * 16, deadline_ns=1), 5.0)
    (_, _, no_route, _), (_, _, expired, _) = io.take()
    assert no_route.outcome == Outcome.NO_ROUTE
    assert expired.outcome == Outcome.EXPIRED
    assert proto.deduper.running_count() == 0


def test_oks_within_a_batch_are_acked_together_per_sender() -> None:
    proto, io = make()
    proto.begin_batch(0, 1.0)
    for mid, peer in ((b"1", b"p1"), (b"2", b"p1"), (b"3", b"p2"), (b"1", b"p1")):
        if proto.accept(0, Item(mid * 16, peer=peer), 1.0):
            proto.handled_ok(mid * 16, peer)
    assert io.take() == []  # the copy of 1 is RUNNING: it needs no ack of its own
    proto.end_batch()
    assert io.take() == [
        ("acks", 0, [b"1" * 16, b"2" * 16], b"p1"),
        ("acks", 0, [b"3" * 16], b"p2"),
    ]
    assert proto.stats.handled == 3
    assert proto.stats.duplicates == 1
    # A later copy is a duplicate answered from the deduper's record.
    assert not proto.accept(0, Item(b"2" * 16), 2.0)
    ((_, _, ack, _),) = io.take()
    assert ack.outcome == Outcome.DUPLICATE


@pytest.mark.parametrize(
    ("exc", "outcome", "runs_again"),
    [
        (RetryLater(0.5, "busy"), Outcome.RETRY_LATER, True),
        (Reject("bad", permanent=True), Outcome.REJECTED, False),
        (ValueError("boom"), Outcome.REJECTED, True),  # transient: the retry runs
    ],
)
def test_a_failed_handler_is_answered_by_its_exception(
    exc: BaseException, outcome: Outcome, runs_again: bool
) -> None:
    proto, io = make()
    item = Item(b"f" * 16)
    assert proto.accept(0, item, 0.0)
    proto.handled(0, item, 0.1, exc)
    ((_, _, ack, _),) = io.take()
    assert ack.outcome == outcome
    if outcome is Outcome.RETRY_LATER:
        assert ack.retry_after == 0.5
    else:
        assert ack.error is not None
        assert ack.error.type == type(exc).__name__
        assert ack.error.permanent == (isinstance(exc, Reject) and exc.permanent)
    assert proto.accept(0, item, 0.2) is runs_again
    assert proto.stats.handler_errors == 1


def test_a_request_is_answered_with_its_response_and_its_duplicate_too() -> None:
    proto, io = make()
    item = Item(b"r" * 16, flags=FLAG_REQUEST)
    assert proto.accept(0, item, 0.0)
    proto.handled(0, item, 0.1, None, b"resp", "svc.Resp")
    ((_, _, ack, _),) = io.take()
    assert (ack.outcome, ack.response, ack.response_type) == (Outcome.OK, b"resp", "svc.Resp")
    assert not proto.accept(0, item, 0.2)
    ((_, _, again, _),) = io.take()
    assert (again.outcome, again.response) == (Outcome.DUPLICATE, b"resp")


def test_an_abandoned_run_runs_again() -> None:
    proto, io = make()
    item = Item(b"c" * 16)
    assert proto.accept(0, item, 0.0)
    assert not proto.accept(0, item, 0.1)  # RUNNING: answered IN_PROGRESS, not run
    proto.abandon(item.id)
    assert proto.accept(0, item, 0.2)
    acks = [a for a in io.take() if a[0] != "hello"]
    assert [(a[0], a[2].outcome) for a in acks] == [("ack", Outcome.IN_PROGRESS)]


# -- the lease: a running handler says so -----------------------------------------------------


def test_a_running_handler_is_announced_every_progress_interval_until_it_ends() -> None:
    proto, io = make()
    assert proto.progress == 0.25  # a quarter of the (default 1 s) heartbeat
    fast, slow = Item(b"f" * 16), Item(b"s" * 16, peer=b"p2")
    proto.begin_batch(0, 0.0)
    assert proto.accept(0, slow, 0.0)
    assert proto.accept(0, fast, 0.0)
    proto.handled_ok(fast.id, fast.peer)  # returned at once: never announced
    proto.end_batch()
    io.take()
    assert proto.running_count() == 1
    assert proto.next_deadline() == 0.25
    notices = []
    for t in (0.25, 0.5, 0.75, 1.0):
        proto.tick(t)
        notices += [(t, a[2].msg_id, a[2].outcome, a[3]) for a in io.take() if a[0] == "ack"]
    assert notices == [(t, slow.id, Outcome.IN_PROGRESS, b"p2") for t in (0.25, 0.5, 0.75, 1.0)]
    proto.handled(0, slow, 1.1)
    assert proto.running_count() == 0
    proto.tick(1.25)
    assert [a for a in io.take() if a[0] == "ack"] == []
    assert proto.stats.in_progress == 4


def test_a_retry_of_a_running_message_hears_in_progress_at_once() -> None:
    proto, io = make()
    item = Item(b"r" * 16)
    proto.begin_batch(0, 0.0)
    assert proto.accept(0, item, 0.0)
    assert not proto.accept(0, item, 0.0)  # a copy in the same batch: no answer
    proto.end_batch()
    assert io.take() == []
    proto.begin_batch(0, 0.1)
    assert not proto.accept(0, Item(item.id, peer=b"p9"), 0.1)  # a retry, via another token
    proto.end_batch()
    ((kind, _, ack, peer),) = io.take()
    assert (kind, ack.outcome, peer) == ("ack", Outcome.IN_PROGRESS, b"p9")


def test_a_durable_ack_after_commit_ends_the_lease() -> None:
    proto, _io = make()
    item = Item(b"d" * 16)
    assert proto.accept(0, item, 0.0)
    proto.ack_ok(0, [item.id], [item.peer], 0.5)  # what durable mode calls after its commit
    assert proto.running_count() == 0


def test_not_registered_says_hello_again_and_other_refusals_reject() -> None:
    proto, io = make()
    proto.on_refusal(0, NOT_REGISTERED, b"", "not registered", 0.0)
    assert io.take() == [("hello", 0)]
    assert not proto.welcomed(0)
    proto.on_welcome(0, 1000, 0.0)
    mid = b"z" * 16
    proto.submit(mid, "x.Do", "x.Do", P, 0.0)
    assert io.take() == [("transmit", 0, mid, 1)]
    proto.on_refusal(0, "MALFORMED", mid, "bad frame", 0.1)
    ((kind, failed_id, error),) = io.take()
    assert (kind, failed_id) == ("failed", mid)
    assert "bad frame" in str(error)


def test_hello_is_said_again_until_a_welcome_comes() -> None:
    io = Recorder()
    proto = EndpointProtocol(ME, io, hello_retry=0.5)
    hub = proto.add_hub()
    proto.connected(hub, 0.0)
    assert proto.next_deadline() == 0.5
    proto.tick(0.4)
    proto.tick(0.5)
    assert io.take() == [("hello", 0), ("hello", 0)]
    proto.on_welcome(hub, 1000, 0.6)
    proto.tick(1.5)
    assert ("hello", 0) not in io.take()
    assert proto.welcomed(hub)


def test_a_silent_hub_is_greeted_again() -> None:
    proto, io = make(misses=3)
    proto.on_welcome(0, 100, 0.0)
    proto.tick(0.05)
    proto.tick(0.15)
    assert ("heartbeat", 0) in io.take()
    proto.tick(0.25)
    proto.tick(0.31)  # three intervals of silence, checked on time
    assert io.take()[-2:] == [("silent", 0), ("hello", 0)]
    assert not proto.welcomed(0)


def test_the_hubs_heartbeat_is_answered_at_once_in_its_stead() -> None:
    proto, io = make(hubs=2)
    proto.begin_batch(1, 0.7)
    proto.on_heartbeat(1, 0.7)
    proto.end_batch()
    assert io.take() == [("heartbeat", 1)]  # at once, to that hub only
    proto.on_heartbeat(1, 0.8)
    assert io.take() == []  # answered already
    proto.tick(1.0)  # hub 0's heartbeat is due from our timer; hub 1's is not
    assert io.take() == [("heartbeat", 0)]


def test_no_heartbeat_goes_to_a_hub_that_has_not_welcomed_us() -> None:
    # It would refuse it ("heartbeat before HELLO"): after a hub restarts, a thousand
    # instances' heartbeats were a thousand refusals and log lines. HELLO is due instead.
    proto, io = make(hubs=1, hello_retry=5.0)
    proto.connected(0, 0.5, up=False)
    proto.connected(0, 0.6)  # a new connection: HELLO, no WELCOME yet
    assert io.take() == [("hello", 0)]
    proto.tick(1.0)  # our heartbeat to it is due
    assert io.take() == []
    proto.on_welcome(0, 1000, 1.1)
    proto.tick(2.1)
    assert io.take() == [("heartbeat", 0)]


def test_waking_from_a_stalled_loop_is_not_a_silent_hub() -> None:
    """Our loop stalled 10 s (an async handler blocked it): the hub's heartbeats wait
    unread in the socket. The late check is put off until they are read."""
    proto, io = make(misses=3)
    proto.tick(10.0)  # the timer, late: before the drain read anything
    assert ("silent", 0) not in io.take()
    proto.begin_batch(0, 10.01)  # the queued heartbeats, read
    proto.end_batch()
    proto.tick(11.0)
    proto.tick(12.0)
    assert ("silent", 0) not in io.take()
    assert proto.welcomed(0)
    proto.tick(25.0)  # the hub went silent, and we stalled again: put off one interval
    assert ("silent", 0) not in io.take()
    proto.tick(26.0)  # nothing heard since: silent
    assert ("silent", 0) in io.take()


def test_closing_cancels_pending_and_abandons_running_handlers() -> None:
    proto, io = make()
    mid = b"x" * 16
    proto.submit(mid, "x.Do", "x.Do", P, 0.0)
    item = Item(b"h" * 16)
    assert proto.accept(0, item, 0.0)
    io.take()
    proto.close([mid], 0.5)
    ((kind, _, error),) = io.take()
    assert kind == "failed"
    assert isinstance(error, Cancelled)
    assert "the endpoint was closed" in str(error)
    proto.handled(0, item, 0.6)
    assert io.take() == []
    assert proto.deduper.running_count() == 0


def test_an_event_no_declared_subscriber_acked_fails_naming_them() -> None:
    proto, io = make()
    mid = b"e" * 16
    declared = P.with_(subscribers=("poker.Audit",), deadline=3.0)
    proto.submit(mid, "ev.Tick", "ev.Tick", declared, 0.0, event=True)
    proto.on_routed(mid, [], 0.1)  # nobody registered: not "delivered"
    for t in (1.0, 1.5, 2.0, 2.5, 3.0):
        proto.tick(t)
    ((_, _, error),) = [a for a in io.take() if a[0] == "failed"]
    assert isinstance(error, AckTimeout)
    assert "no acknowledgement from subscriber poker.Audit" in str(error)


def test_hello_names_the_schema_services_the_handlers_run() -> None:
    proto, io = make()
    proto.set_types(["svc.Do"], [], 1.0, ["poker.Table"])
    assert proto.implements == ("poker.Table",)
    assert io.take() == [("hello", 0)]


def _heard(proto: EndpointProtocol, hubs: Sequence[int], now: float) -> None:
    for hub in hubs:
        proto.begin_batch(hub, now)
        proto.end_batch()


def test_a_retry_goes_through_the_hub_its_last_attempt_went_through() -> None:
    proto, io = make(hubs=3)
    mids = [bytes([n]) * 16 for n in range(6)]
    for mid in mids:
        proto.submit(mid, "x.Do", "x.Do", P, 0.0)
    first = {a[2]: a[1] for a in io.take() if a[0] == "transmit"}
    assert set(first.values()) == {0, 1, 2}  # first attempts spread over the hubs
    _heard(proto, [0, 1, 2], 1.4)
    proto.tick(1.0)
    proto.tick(1.5)  # attempt 2 of each: through the same hub, not round robin
    second = {a[2]: a[1] for a in io.take() if a[0] == "transmit"}
    assert second == first


def test_a_retry_avoids_a_suspect_hub_while_another_is_heard() -> None:
    proto, io = make(hubs=2)
    mid = b"m" * 16
    proto.submit(mid, "x.Do", "x.Do", P, 0.0)
    (via,) = [a[1] for a in io.take() if a[0] == "transmit"]
    other = 1 - via
    _heard(proto, [other], 1.4)  # `via` quiet since 0.0: more than 1.5 heartbeats
    proto.tick(1.0)
    proto.tick(1.6)
    assert [a[1] for a in io.take() if a[0] == "transmit"] == [other]
    # a first attempt avoids it too, though round robin would name it
    for n in range(3):
        proto.submit(bytes([n]) * 16, "x.Do", "x.Do", P, 1.6)
    assert {a[1] for a in io.take() if a[0] == "transmit"} == {other}


def test_the_hub_of_a_settled_message_is_forgotten() -> None:
    proto, io = make(hubs=2)
    mid = b"m" * 16
    proto.submit(mid, "x.Do", "x.Do", P, 0.0)
    proto.on_routed(mid, ["other"], 0.05)  # the hub: x.Do is other's (BOB's service)
    io.take()
    assert proto._via
    proto.on_acks(BOB, [mid], (), 0.1)
    assert io.take() == [("acked", [mid])]
    assert proto._via == {}


def test_an_attempt_waits_for_a_hub_that_welcomes_and_is_not_spent() -> None:
    """With no hub welcoming the endpoint (its link dropped, or it restarted and asked
    for a HELLO), an attempt is taken back instead of being sent into the void: it goes
    when a hub welcomes, with the same number (a first attempt stays one, which a
    restarted hub routes at once), and spends nothing meanwhile."""
    proto, io = make()
    proto.connected(0, 0.0, up=False)
    first, retry = b"f" * 16, b"r" * 16
    proto.submit(retry, "x.Do", "x.Do", P, 0.0)
    proto.connected(0, 0.1, up=True)
    proto.on_welcome(0, 1000, 0.1)
    io.take()
    proto.on_refusal(0, NOT_REGISTERED, retry, "MESSAGE before HELLO", 0.2)  # hub restarted
    assert io.take() == [("hello", 0)]
    proto.submit(first, "x.Do", "x.Do", P, 0.3)
    for t in (1.0, 1.5, 2.0, 5.0):  # retry's timeout and backoff pass: nothing goes
        proto.tick(t)
    assert [a for a in io.take() if a[0] in ("transmit", "failed")] == []
    assert proto.stats.transmits == 1
    proto.on_welcome(0, 1000, 5.0)
    assert io.take() == [("transmit", 0, first, 1), ("transmit", 0, retry, 2)]
    assert proto.stats.transmits == 3


def test_a_message_no_hub_took_fails_at_its_deadline_saying_so() -> None:
    proto, io = make()
    proto.on_bye(0)
    mid = b"m" * 16
    proto.submit(mid, "x.Do", "x.Do", Policy(deadline=3.0), 0.0)
    for t in (1.0, 2.0, 3.0):
        proto.tick(t)
    failed = [a for a in io.take() if a[0] == "failed"]
    assert len(failed) == 1
    error = failed[0][2]
    assert isinstance(error, AckTimeout)
    assert "not sent before its deadline: no hub answers this endpoint" in str(error)
    assert "said BYE" in str(error)
    assert proto.stats.transmits == 0


def tick(proto: EndpointProtocol, now: float) -> None:
    """Time passes, and every hub is heard from (none is suspect)."""
    for hub in range(proto.hubs):
        proto.begin_batch(hub, now)
        proto.end_batch()
    proto.tick(now)


def sent(io: Recorder) -> list[tuple[Any, ...]]:
    return [a for a in io.take() if a[0] == "transmit"]


def test_a_hub_in_its_grace_period_yields_to_a_clear_one() -> None:
    """Several hubs: a hub that defers a message (its grace period after a restart or a
    rejoin) gets no more traffic while that lasts; the deferred message goes through
    another hub after a backoff, not after the grace, and first attempts avoid it."""
    proto, io = make(hubs=2)
    fresh, old = Identity("hub", "fresh"), Identity("hub", "old")
    proto.on_welcome(0, 1000, 0.0, fresh)
    proto.on_welcome(1, 1000, 0.0, old)
    proto.submit(b"a" * 16, "x.Do", "x.Do", P, 0.0)
    proto.submit(b"b" * 16, "x.Do", "x.Do", P, 0.0)
    # Round robin: one of the two went through hub 0 (the other is left unanswered).
    mid = next(m for _, hub, m, _ in io.take() if hub == 0)
    tick(proto, 1.0)
    tick(proto, 1.5)  # its ack timeout and backoff: attempt 2, through hub 0 again
    assert ("transmit", 0, mid, 2) in sent(io)
    deferral = AckReply(mid, Outcome.RETRY_LATER, fresh, retry_after=2.0, attempt=2, deferred=True)
    proto.on_acks(fresh, [], [deferral], 1.6)
    tick(proto, 2.5)  # the backoff after attempt 2 (1 s here) ends before the grace (3.6)
    assert [a for a in sent(io) if a[2] == mid] == []
    tick(proto, 2.7)
    assert [a for a in sent(io) if a[2] == mid] == [("transmit", 1, mid, 3)]
    for n in range(4):  # first attempts: hub 1 alone while hub 0's grace lasts
        proto.submit(bytes([n]) * 16, "x.Do", "x.Do", P, 2.8)
    assert {a[1] for a in io.take()} == {1}
    for n in range(4):  # and both again after it
        proto.submit(bytes([n + 10]) * 16, "x.Do", "x.Do", P, 3.7)
    assert {a[1] for a in io.take()} == {0, 1}


def test_with_no_clear_hub_a_deferred_message_waits_out_the_grace() -> None:
    proto, io = make(hubs=2)
    fresh = Identity("hub", "fresh")
    proto.on_welcome(0, 1000, 0.0, fresh)
    proto.on_bye(1)
    mid = b"w" * 16
    proto.submit(mid, "x.Do", "x.Do", P, 0.0)
    assert io.take() == [("transmit", 0, mid, 1)]
    tick(proto, 1.0)
    tick(proto, 1.5)
    io.take()
    deferral = AckReply(mid, Outcome.RETRY_LATER, fresh, retry_after=2.0, attempt=2, deferred=True)
    proto.on_acks(fresh, [], [deferral], 1.6)
    tick(proto, 2.5)
    assert sent(io) == []
    tick(proto, 3.6)
    assert sent(io) == [("transmit", 0, mid, 3)]


def test_a_retry_leaves_a_hub_quiet_since_for_one_heard_from() -> None:
    """A hub cut off a moment ago is not suspect yet (1.5 intervals), but a retry whose
    attempt it left unanswered, quiet for more than half an interval while another hub
    was heard, goes through that other hub; a hub heard from keeps its retries."""
    proto, io = make(hubs=2)
    fast = Policy(ack_timeout=0.5, backoff_base=0.1, jitter=0.0)
    proto.submit(b"a" * 16, "x.Do", "x.Do", fast, 0.0)
    proto.submit(b"b" * 16, "x.Do", "x.Do", fast, 0.0)
    via = {m: hub for _, hub, m, _ in io.take()}
    assert set(via.values()) == {0, 1}
    for t in (0.3, 0.5, 0.6, 0.7):  # hub 1 heard all along, hub 0 silent from 0.0
        proto.begin_batch(1, t)
        proto.end_batch()
        proto.tick(t)
    retries = {a[2]: a[1] for a in io.take() if a[0] == "transmit" and a[3] == 2}
    assert retries == {b"a" * 16: 1, b"b" * 16: 1}
