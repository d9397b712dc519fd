"""The reliability core: sans-IO state machines with an injected clock.

Nothing here reads a clock, sleeps, or touches a socket or an event loop: every call takes
``now`` (monotonic seconds) and returns what to do. The endpoint and the hub drive these
machines; the simulation (:mod:`ackbus.testing.simulate`) proves them over seeded faults.

- :class:`OutboundTracker`: pending messages, ack timeouts, retries with backoff and
  jitter, deadlines, per-destination windows; settles each message with a
  :class:`Completion`.
- :class:`InboundDeduper`: a message id is handled at most once per receiving instance.
- :class:`Liveness`: heartbeats both ways and peer death.
- :class:`RoutingTable`: the hub's instances, load spreading and sticky retries.
- :class:`Policy`, :class:`Identity`, :class:`Kind`: the value types they work with
  (re-exported by :mod:`ackbus`).

docs/core.md has the state tables and the decisions.
"""

from ._common import Outcome, RemoteError
from ._values import Identity, Kind, Policy, SubscriberPolicy
from .dedupe import DedupeRecord, InboundDeduper, Verdict
from .liveness import Liveness, LivenessAction, PeerDead, SendHeartbeat, negotiate
from .routing import Instance, RoutingTable
from .tracker import (
    Admit,
    Completion,
    MsgState,
    OutboundTracker,
    Reason,
    Status,
    TrackerAction,
    Transmit,
    backoff_delay,
)

__all__ = [
    "Admit",
    "Completion",
    "DedupeRecord",
    "Identity",
    "InboundDeduper",
    "Instance",
    "Kind",
    "Liveness",
    "LivenessAction",
    "MsgState",
    "OutboundTracker",
    "Outcome",
    "PeerDead",
    "Policy",
    "Reason",
    "RemoteError",
    "RoutingTable",
    "SendHeartbeat",
    "Status",
    "SubscriberPolicy",
    "TrackerAction",
    "Transmit",
    "Verdict",
    "backoff_delay",
    "negotiate",
]
