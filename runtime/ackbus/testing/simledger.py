"""The simulation's bookkeeping: the ground truth its actors record (:class:`Ledger`) and
the messages its senders will send (:class:`Planned`); :mod:`ackbus.testing.simactors`
re-exports both."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..core import Policy

__all__ = ["Ledger", "Planned"]


@dataclass(slots=True)
class Ledger:
    """Ground truth the actors cannot see: who ran what, who is alive."""

    ok_runs: dict[tuple[str, bytes], tuple[str, int, int]] = field(default_factory=dict)
    """(service, msg_id) → (instance addr, its incarnation, routing hub's incarnation) of the
    first successful run."""
    last_route: dict[tuple[str, bytes], tuple[str, int]] = field(default_factory=dict)
    """(service, msg_id) → (instance addr, hub incarnation) of the latest routing."""
    diverted: dict[tuple[str, bytes], str] = field(default_factory=dict)
    """Messages a hub routed to another instance than the previous time, and why: the previous
    one was not registered ("unregistered"), or the hub restarted since, losing its sticky map
    ("hub-restart"). From then on two instances may hold a dedupe entry, and a second run is
    allowed. Any other change of instance is a sticky-routing violation."""
    reruns: Counter[str] = field(default_factory=Counter)
    started: set[tuple[str, bytes]] = field(default_factory=set)
    """(service, msg_id) of every handler that started (a failed report must not hide
    them: for an event, those of the subscribers it names missing)."""
    lease: Counter[str] = field(default_factory=Counter)
    """Long handler runs, and the IN_PROGRESS notices sent."""
    stalls: Counter[str] = field(default_factory=Counter)
    """Stalled receivers (their loop frozen, their connection up) and what the hub did."""
    key_runs: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)
    """(service, ordering key) → the ids of the key's messages in the order of their
    first successful runs on that service (the order check: per sender, acked ones in
    send order)."""
    violations: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Planned:
    msg_id: bytes
    msg_type: str
    recipient: str | None
    event: bool
    at: float
    policy: Policy
    expect: str
    """"acked", "no-route" or "nobody" (an event acked by no one)."""
    priority: int = 0
    key: int = 0
    """Its ordering key (0: none)."""
