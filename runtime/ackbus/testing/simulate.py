"""Deterministic simulation of senders, a hub and service instances over a faulty network,
running the runtime's own endpoint and hub protocols.

Run it: ``python -m ackbus.testing.simulate --seeds 2000`` (or ``--seed S -v`` to replay one
seed with a trace). Each seed draws its own faults (loss, duplicates, delays that reorder,
partitions, receiver crashes with memory loss, hub crashes with table loss) and traffic
(commands by type, commands to a named service, events with several subscribers, a command
nobody handles, an event nobody subscribes to), runs every message to its end, and checks:

- every message settled (acked or failed with a reason); none is pending when the run ends;
- an acked command ran its handler on the target service; an acked event ran on every
  service the hub routed it to; the command nobody handles failed with "no-route"; the event
  nobody subscribes to was acked by nobody; every other message was acked (loss < 100 %,
  enough attempts);
- a handler never ran to success twice for one message id on the same instance incarnation
  (the deduper); a hub never sent a retry to another instance while the one that got the
  previous attempt was registered with it (sticky routing); and every second run on another
  instance has a cause DESIGN.md allows: the first instance crashed (its memory lost), the hub
  did not know it (declared dead, e.g. partitioned), or the hub restarted (sticky map lost)
  and the registered instances changed. Each such run is counted by cause;
- nothing leaks: trackers, windows and timers are empty; the hub's in-flight credits return
  to zero once its sticky entries expire; no handler is left running.

Event fan-out is checked against the schema: an acked event must have run on every service
its policy declares as a subscriber (``ev.Tick``: alpha, beta and gamma), whether or not
that service was registered when the event was published (a hub restart, a crash, a
partition). ``--scenario hub-restart-events`` replays a hub restart with events in flight.

Durable mode runs too: per seed, no node, some services and senders, or all of them
(``--durability``, drawn apart from the seed's own generator, so a seed without durable nodes
replays as before) run the runtime's own :class:`~ackbus.endpoint._durable.Durable` on a
:class:`~ackbus.testing.simstore.SimStore`, whose rows survive a crash and whose commits take
seeded simulated time (a commit in flight at a crash lands or is lost). Durable senders crash
too. For durable nodes the checks are: a durable receiver never ran a handler to a committed
success (its inbox record on the simulated disk) twice for one message id, even across its
crashes; a run on another instance needs a diversion; every message whose outbox row committed
is delivered, though its sender crashed before the ack (its next incarnation resumes it); a
message whose row had not committed when its sender crashed may be lost, and is counted.

The actors (drivers of :class:`~ackbus.core.endpoint_protocol.EndpointProtocol` and
:class:`~ackbus.core.hub_protocol.HubProtocol`) live in :mod:`ackbus.testing.simactors`,
the faulty network in :mod:`ackbus.testing.simnet`, durable mode's glue and store in
:mod:`ackbus.testing.simdurable` and :mod:`ackbus.testing.simstore`.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from functools import partial

from ..core import Identity, Policy, SubscriberPolicy
from ..core.settled import GaveUp
from ..core.tracker import Completion, Reason, Status
from .simactors import (
    COMMANDS,
    EVENTS,
    HUB,
    SERVICES,
    SUBSCRIBERS,
    Ledger,
    Planned,
    SimEndpoint,
    SimHub,
)
from .simnet import FaultModel, SimNetwork

__all__ = ["SimResult", "main", "run_seed"]


# -- one seed -------------------------------------------------------------------------------


@dataclass(slots=True)
class SimResult:
    seed: int
    messages: int = 0
    acked: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    diverted: set[tuple[str, bytes]] = field(default_factory=set)
    """Messages the hub routed away from their first runner while it did not know it: from
    then on two instances may hold a dedupe entry, and a second run is allowed."""
    reruns: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    durable: tuple[str, ...] = ()
    """The nodes that ran in durable mode (on a simulated store)."""
    unaccepted: int = 0
    """Messages a durable sender crashed before committing to its outbox: lost, allowed."""
    store: Counter[str] = field(default_factory=Counter)
    """Durable stores: commits, and batches in flight at a crash that landed or were lost."""
    lease: Counter[str] = field(default_factory=Counter)
    """Long handler runs and the IN_PROGRESS notices that held their lease."""
    stalls: Counter[str] = field(default_factory=Counter)
    """Stalled receivers (loop frozen, connection up), and how the hub saw them."""
    sim_time: float = 0.0
    net: dict[str, int] = field(default_factory=dict)
    faults: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations


def _plan_faults(
    rng: random.Random, instances: list[SimEndpoint], senders: list[SimEndpoint]
) -> FaultModel:
    faults = FaultModel(
        loss=rng.choice((0.0, 0.02, 0.1, 0.3)),
        duplicate=rng.choice((0.0, 0.05, 0.2)),
        delay=rng.uniform(0.0005, 0.005),
        jitter=rng.choice((0.0, 0.005, 0.05)),
    )
    nodes = [i.addr for i in instances] + [s.addr for s in senders]
    for _ in range(rng.randint(0, 2)):
        start = rng.uniform(0.0, 8.0)
        faults.partitions.append(
            (start, start + rng.uniform(0.1, 3.0), frozenset((HUB, rng.choice(nodes))))
        )
    return faults


def _submit(sender: SimEndpoint, plan: Planned, now: float) -> None:
    sender.submit(plan, now)


def _crash(node: SimEndpoint | SimHub, now: float) -> None:
    if node.up:
        node.crash(now)


def _restart(node: SimEndpoint | SimHub, now: float) -> None:
    if not node.up:
        node.restart(now)


def _stall(node: SimEndpoint, length: float, now: float) -> None:
    node.stall(now, now + length)


def _plan_stalls(seed: int, net: SimNetwork, instances: list[SimEndpoint]) -> None:
    """0-2 stalls of service instances (their loop held 0.3-6 s, connection up), drawn
    apart from the seed's own generator, so that the other draws of a seed stay as
    they were before stalls were simulated."""
    rng = random.Random(f"stalls {seed}")
    memory = [i for i in instances if i.store is None]  # durable commits run on a thread
    for _ in range(rng.choice((0, 0, 1, 2)) if memory else 0):
        victim = rng.choice(memory)
        net.call_at(rng.uniform(0.0, 10.0), partial(_stall, victim, rng.uniform(0.3, 6.0)))


_HIDING = (Reason.NO_ROUTE, Reason.TIMEOUT, Reason.EXPIRED)
"""Failure reasons that say no handler ran the message."""

_POLICY = Policy(
    ack_timeout=0.3, max_attempts=100, backoff_base=0.02, backoff_cap=0.5, jitter=0.3,
    deadline=60.0, retry_rejected=True,
)  # fmt: skip


_TICK = _POLICY.with_(
    deadline=6.0,
    subscribers=tuple(SUBSCRIBERS["ev.Tick"]),
    subscriber_policies=(
        SubscriberPolicy("alpha", deadline=60.0),
        SubscriberPolicy("beta", max_attempts=8),
    ),
)
"""ev.Tick's policy: its schema declares alpha, beta and gamma as subscribers, each with
its own limits: alpha is waited for 60 s (past the event's own 6 s, as Audit in the
example schema), beta for 8 attempts that reach it, gamma for the event's 6 s."""

SCENARIOS = ("random", "hub-restart-events")


DURABILITY = ("none", "some", "all")


def _durable_nodes(seed: int, mode: str | None) -> set[str]:
    """Which services and senders of a seed run in durable mode: ``mode`` "none", "some"
    (each service and sender with a chance of one half) or "all"; drawn per seed when
    ``None``. Drawn apart from the seed's own generator, so that a seed without durable
    nodes replays exactly as it did before durable mode was simulated."""
    rng = random.Random(f"durable {seed}")
    mode = mode or rng.choice(DURABILITY)
    if mode not in DURABILITY:
        raise ValueError(f"unknown durability {mode!r}; one of {DURABILITY}")
    names = [*SERVICES, *(f"sender{i}" for i in range(2))]
    return {n for n in names if mode == "all" or (mode == "some" and rng.random() < 0.5)}


LIMITS = (1, 2, 3, 1000)
"""The max_concurrency an instance draws: a hard limit the hub and the instance keep."""


def _cluster(
    rng: random.Random,
    net: SimNetwork,
    ledger: Ledger,
    durable: AbstractSet[str] = frozenset(),
    limits: random.Random | None = None,
) -> tuple[SimHub, list[SimEndpoint], list[SimEndpoint]]:
    """The hub, the service instances (``limits``: draws their max_concurrency; else
    1000) and two senders."""
    hub = SimHub(net, ledger)
    net.add(hub)
    instances = [
        SimEndpoint(
            f"{s}/{i}",
            Identity(s, str(i)),
            net,
            ledger,
            random.Random(rng.random()),
            commands=COMMANDS[s],
            events=EVENTS[s],
            implements=(s,),
            durable=s in durable,
            max_concurrency=limits.choice(LIMITS) if limits is not None else 1000,
        )
        for s, n in SERVICES.items()
        for i in range(n)
    ]
    senders = [
        SimEndpoint(
            f"sender{i}",
            Identity("sender", f"sender{i}"),
            net,
            ledger,
            random.Random(rng.random()),
            window=8,
            durable=f"sender{i}" in durable,
        )
        for i in range(2)
    ]
    for node in [*instances, *senders]:
        net.add(node)
    return hub, instances, senders


def run_seed(
    seed: int,
    *,
    messages: int = 24,
    trace: bool = False,
    scenario: str = "random",
    durability: str | None = None,
) -> SimResult:
    """Run one seeded scenario to its end and check the invariants. ``durability``: which
    nodes run in durable mode ("none", "some", "all"; by default drawn per seed)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {SCENARIOS}")
    rng = random.Random(seed)
    net = SimNetwork(rng)
    ledger = Ledger()
    result = SimResult(seed)
    if trace:
        net.trace = print
    durable = _durable_nodes(seed, durability) if scenario == "random" else set()
    # Drawn apart from the seed's generator, as durability is.
    limits = random.Random(f"limits {seed}")
    hub, instances, senders = _cluster(rng, net, ledger, durable, limits)
    result.durable = tuple(n.addr for n in [*instances, *senders] if n.store is not None)
    if scenario == "hub-restart-events":
        _hub_restart_events(rng, net, hub, senders, messages)
        return _finish(result, net, ledger, hub, instances, senders)
    net.faults = _plan_faults(rng, instances, senders)
    _plan_stalls(seed, net, instances)
    fail_rate = rng.choice((0.0, 0.0, 0.05))
    for inst in instances:
        inst.fail_rate = fail_rate

    policy = _POLICY
    short = policy.with_(deadline=20.0)
    kinds = [
        ("alpha.Do", None, False, policy, "acked"),
        ("beta.Do", None, False, policy, "acked"),
        ("shared.Cmd", "alpha", False, policy, "acked"),
        ("shared.Cmd", "beta", False, policy, "acked"),
        ("ev.Tick", None, True, _TICK, "acked"),
        ("nobody.Cmd", None, False, short, "no-route"),
        ("ev.Lonely", None, True, short, "nobody"),
    ]
    weights = [6, 4, 2, 2, 5, 1, 1]
    # Ordering keys, drawn apart from the seed's generator: in two seeds of three, half
    # of the routable commands and events carry one of three keys (shared across their
    # types, so a key's stream mixes commands and events).
    keys = random.Random(f"keys {seed}")
    keyed = keys.random() < 2 / 3
    for n in range(messages):
        msg_type, recipient, event, pol, expect = rng.choices(kinds, weights)[0]
        at = rng.uniform(0.0, 8.0)
        plan = Planned(rng.randbytes(16), msg_type, recipient, event, at, pol, expect)
        plan = replace(plan, priority=limits.choice((0, 0, 0, 1, 5, 9)))
        if keyed and expect == "acked" and keys.random() < 0.5:
            plan = replace(plan, key=keys.randint(1, 3))
        net.call_at(at, partial(_submit, senders[n % len(senders)], plan))

    # Durable senders crash too: what they committed survives (memory senders do not: a
    # message they accepted would be lost with them, as docs/durable.md says).
    crash_targets: list[SimEndpoint | SimHub] = [*instances, hub]
    crash_targets += [s for s in senders if s.store is not None]
    for _ in range(rng.randint(0, 3)):
        victim = rng.choice(crash_targets)
        at = rng.uniform(0.0, 10.0)
        down = rng.uniform(0.05, 3.0)
        net.call_at(at, partial(_crash, victim))
        net.call_at(at + down, partial(_restart, victim))
    result.faults = (
        f"loss={net.faults.loss} dup={net.faults.duplicate} jitter={net.faults.jitter} "
        f"partitions={len(net.faults.partitions)} fail_rate={fail_rate}"
        f" durable={','.join(result.durable) or '-'}"
    )
    return _finish(result, net, ledger, hub, instances, senders)


def _hub_restart_events(
    rng: random.Random, net: SimNetwork, hub: SimHub, senders: list[SimEndpoint], messages: int
) -> None:
    """Events published steadily while the hub is killed at 2 s and back 0.3 s later: the
    restarted hub routes an event's first attempt before every subscriber said HELLO
    again: the publishers must wait for the declared subscribers and re-send."""
    for n in range(messages):
        at = 1.5 + 1.5 * n / messages
        plan = Planned(rng.randbytes(16), "ev.Tick", None, True, at, _TICK, "acked")
        net.call_at(at, partial(_submit, senders[n % len(senders)], plan))
    net.call_at(2.0, partial(_crash, hub))
    net.call_at(2.3, partial(_restart, hub))


def _finish(
    result: SimResult,
    net: SimNetwork,
    ledger: Ledger,
    hub: SimHub,
    instances: list[SimEndpoint],
    senders: list[SimEndpoint],
) -> SimResult:
    """Run the scenario to its end and check the invariants."""

    def settled() -> bool:
        return net.now > 12.0 and all(s.settled() for s in senders)

    finished = net.run(settled, max_time=300.0)
    result.sim_time = net.now
    # A sender that settled (its event's deadline passed for a subscriber) leaves its
    # message held at the hub until a slot frees: the hub must still empty its queues,
    # one slot at a time (a lost answer's slot comes back after the hold lease).
    if finished and hub.up and hub.proto.holds:
        net.run(lambda: not hub.up or not hub.proto.holds, max_time=net.now + 120.0)
    # Let in-flight deliveries and running handlers finish, then look for leaks.
    net.drain(max_time=net.now + 5.0)
    result.reruns = ledger.reruns
    result.lease = ledger.lease
    result.stalls = ledger.stalls
    result.net = {"sent": net.sent, "dropped": net.dropped, "dup": net.duplicated}
    for node in [*instances, *senders]:
        # No peer forges here: these are acks that overtook the hub's notice naming
        # their command type's service (the network reorders), or came from a service
        # routed to before; the sender retried, and the receiver re-acked.
        foreign = node.proto.tracker.foreign
        if foreign:
            result.lease["acks refused: not from the service addressed"] += foreign
        if node.store is not None:
            result.store["commits"] += node.store.commits
            result.store["landed at crash"] += node.store.landed_at_crash
            result.store["lost at crash"] += node.store.lost_at_crash
            result.store["resumed from the outbox"] += node.resumed
    v = result.violations
    v.extend(ledger.violations)
    if not finished:
        v.append("messages still pending at the time limit")
    for sender in senders:
        _check_sender(sender, ledger, result)
    for inst in instances:
        running = inst.proto.deduper.running_count()
        if inst.up and running:
            v.append(f"{inst.addr} still has {running} handlers running")
        leased = inst.proto.running_count()
        if inst.up and leased:
            v.append(f"{inst.addr} still announces {leased} handlers in progress")
        if inst.up and inst.proto.keys_held():
            v.append(f"{inst.addr} still holds {inst.proto.keys_held()} ordering keys")
    if hub.up:
        table = hub.proto.routing
        # Slots of answers the network lost come back when their sticky entries expire;
        # then nothing may still be held (no message waits at the hub forever).
        later = net.now + table.sticky_ttl + 1
        table.tick(later)
        hub.proto.dispatch(later)
        if len(hub.proto.holds):
            v.append(f"hub still holds {len(hub.proto.holds)} messages")
        table.tick(later + table.sticky_ttl + 1)
        leaked = {i.peer: table.in_flight(i.peer) for i in table.instances()}
        if any(leaked.values()) or table.sticky_count():
            v.append(f"hub leaks credits {leaked} / {table.sticky_count()} sticky entries")
    return result


def _check_sender(sender: SimEndpoint, ledger: Ledger, result: SimResult) -> None:
    v = result.violations
    tracker = sender.proto.tracker
    in_flight = sum(tracker.in_flight(p.recipient or p.msg_type) for p in sender.planned.values())
    if tracker.pending_count() or in_flight or tracker.next_deadline() is not None:
        v.append(f"{sender.addr} tracker leaks: {tracker.pending_count()} pending")
    if tracker.keys_held():
        v.append(f"{sender.addr} tracker leaks {tracker.keys_held()} ordering keys")
    _check_key_order(sender, ledger, result)
    for msg_id, plan in sender.planned.items():
        result.messages += 1
        done = sender.results.get(msg_id)
        label = f"{plan.msg_type} {msg_id.hex()}"
        if sender.store is not None and msg_id not in sender.accepted:
            # The durable sender crashed before its outbox row committed (or was down):
            # send never returned, so nothing was promised.
            result.unaccepted += 1
            if done is not None:
                v.append(f"{label} settled although its outbox row never committed")
            continue
        if done is None:
            v.append(f"{label} never settled")
            continue
        if done.status is Status.ACKED:
            result.acked += 1
        else:
            result.failed[str(done.reason)] += 1
        # Whose runs the report speaks for: an event's missing subscribers, else anyone.
        whose = done.missing or SERVICES
        if (
            not done
            and done.reason in _HIDING
            and any((s, msg_id) in ledger.started for s in whose)
        ):
            v.append(f"{label}: reported {done.reason}, but its handler ran (a hidden run)")
        if plan.expect == "no-route":
            # Outcome unknown when an answer was lost: an attempt timed out unanswered.
            if done.reason not in (Reason.NO_ROUTE, Reason.OUTCOME_UNKNOWN):
                v.append(f"{label}: expected no-route, got {done.status.value} {done.reason}")
            continue
        if plan.event and plan.policy.subscribers:
            _check_subscribers(sender, plan, done, label, result)
        if not done:
            if not (plan.event and done.missing):
                v.append(
                    f"{label} failed: {done.reason} {done.error} after {done.attempts} attempts"
                )
            continue
        services = [r.service for r in done.acked_by]
        if plan.expect == "nobody" and services:
            v.append(f"{label}: acked by {services}, but nobody subscribes")
        if not plan.event:
            service = plan.recipient or plan.msg_type.split(".")[0]
            if services != [service]:
                v.append(f"{label}: acked by {services}, expected {service}")
        for service in services:
            if (service, msg_id) not in ledger.ok_runs:
                v.append(f"{label}: acked by {service} whose handler never ran it (lost)")
        if plan.event:
            missing = sorted(set(SUBSCRIBERS.get(plan.msg_type, ())) - set(services))
            if missing:
                v.append(f"{label}: acked, but never handled by subscribers {missing} (lost)")


def _check_key_order(sender: SimEndpoint, ledger: Ledger, result: SimResult) -> None:
    """Per ordering key and receiving service, this sender's acked messages of the key
    first ran in the order they were sent (``planned`` is in submit order)."""
    sent: dict[int, list[bytes]] = {}
    for msg_id, plan in sender.planned.items():
        done = sender.results.get(msg_id)
        if plan.key and done is not None and done:
            sent.setdefault(plan.key, []).append(msg_id)
    for (service, key), runs in ledger.key_runs.items():
        mine = sent.get(key)
        if not mine:
            continue
        acked = set(mine)
        ran = [m for m in runs if m in acked]
        expected = [m for m in mine if m in set(ran)]
        result.lease["keyed messages checked for order"] += len(ran)
        if ran != expected:
            result.violations.append(
                f"{sender.addr}: key {key} ran on {service} out of send order: "
                f"{[m.hex()[:8] for m in ran]} for {[m.hex()[:8] for m in expected]}"
            )


def _check_subscribers(
    sender: SimEndpoint, plan: Planned, done: Completion, label: str, result: SimResult
) -> None:
    """An event with declared subscribers: the delivery to each ends by its own limits.
    A failed report names only subscribers whose own deadline passed or whose own
    attempts reached them unanswered, and (a sender that never crashed) it settles by the
    longest deadline at most; an acked one names none."""
    v = result.violations
    pol = plan.policy
    if pol.life > pol.deadline and done.completed_at > plan.at + pol.deadline:
        result.lease["events waited for past the event's own deadline"] += 1
    if sender.incarnation == 0 and done.completed_at > plan.at + pol.life + 1e-6:
        v.append(f"{label}: settled at {done.completed_at:.3f}, past its last deadline")
    if done:
        return
    if not done.missing or len(done.missing_why) != len(done.missing):
        v.append(f"{label}: failed ({done.reason}) naming no subscriber that ran out")
        return
    for name, why in zip(done.missing, done.missing_why, strict=True):
        attempts, deadline = pol.limits(name)
        result.lease[f"events given up on {name}: {why}"] += 1
        if why is GaveUp.DEADLINE and done.completed_at < plan.at + deadline - 1e-6:
            v.append(f"{label}: gave up on {name} before its deadline ({deadline} s)")
        elif why is GaveUp.ATTEMPTS and done.attempts < attempts:
            v.append(f"{label}: gave up on {name} after {done.attempts} < {attempts} attempts")
        elif why is None:
            v.append(f"{label}: gave up on {name} with neither its attempts nor deadline spent")


# -- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ackbus.testing.simulate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=500, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="run only this seed")
    parser.add_argument("--messages", type=int, default=24, help="messages per seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="trace every message")
    parser.add_argument("--scenario", choices=SCENARIOS, default="random")
    parser.add_argument(
        "--durability",
        choices=DURABILITY,
        help="which nodes run in durable mode (default: drawn per seed)",
    )
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    totals: Counter[str] = Counter()
    failing: list[int] = []
    for seed in seeds:
        result = run_seed(
            seed,
            messages=args.messages,
            trace=args.verbose,
            scenario=args.scenario,
            durability=args.durability,
        )
        totals["messages"] += result.messages
        totals["acked"] += result.acked
        totals.update({f"failed {k}": n for k, n in result.failed.items()})
        totals.update({f"rerun after {k}": n for k, n in result.reruns.items()})
        totals.update(result.lease)
        totals.update(result.stalls)
        totals["durable seeds"] += bool(result.durable)
        totals["durable: not accepted (sender crashed first)"] += result.unaccepted
        totals.update({f"durable: {k}": n for k, n in result.store.items()})
        if not result.ok:
            failing.append(seed)
            print(f"seed {seed} FAILED ({result.faults}):", file=sys.stderr)
            for problem in result.violations[:10]:
                print(f"  {problem}", file=sys.stderr)
            durability = f" --durability {args.durability}" if args.durability else ""
            reproduce = (
                f"python -m ackbus.testing.simulate --seed {seed} --scenario {args.scenario}"
                f" --messages {args.messages}{durability} -v"
            )
            print(f"  reproduce: {reproduce}", file=sys.stderr)
    summary = ", ".join(f"{k}={n}" for k, n in sorted(totals.items()))
    print(f"{len(seeds)} seeds: {summary}; {len(failing)} failing")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
