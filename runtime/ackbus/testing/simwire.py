"""The values the simulation's actors exchange over its network: what the runtime would
encode with ``ackbus.wire``, as plain objects (:mod:`ackbus.testing.simactors`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core._values import Identity
from ..core.endpoint_io import AckReply

__all__ = [
    "AckGroup",
    "Heartbeat",
    "Hello",
    "Item",
    "Items",
    "Refusal",
    "Routed",
    "Run",
    "Welcome",
]


@dataclass(frozen=True, slots=True)
class Item:
    """A message item: what the endpoint and hub protocols read of one."""

    id: bytes
    type: str
    recipient: str
    kind: int
    attempt: int
    deadline_ns: int
    peer: bytes = b""
    """Empty from a sender; the origin's address once a hub forwarded it."""
    flags: int = 0
    priority: int = 0
    key: int = 0
    """The ordering key's hash (0: none)."""
    routed_by: int = 0
    """Incarnation of the hub that routed this copy (for the ledger)."""
    method: str = ""
    """The rpc it names (the simulation's senders name none)."""

    def __str__(self) -> str:
        return f"item {self.type} {self.id.hex()[:8]} #{self.attempt}"


@dataclass(frozen=True, slots=True)
class Run:
    """A packed run of commands (the simulation's senders send none)."""

    ids: tuple[bytes, ...]
    type: str
    recipient: str
    method: str = ""


@dataclass(frozen=True, slots=True)
class Items:
    items: tuple[Item, ...]

    def __str__(self) -> str:
        return ", ".join(map(str, self.items))


@dataclass(frozen=True, slots=True)
class AckGroup:
    """Acks for one peer: from an endpoint, ``peer`` is the sender's address; from the
    hub, the receiver's token."""

    peer: bytes
    ok_ids: list[bytes]
    full: list[AckReply]

    def __str__(self) -> str:
        full = [f"{a.outcome.name} {a.msg_id.hex()[:8]}" for a in self.full]
        return f"acks {[i.hex()[:8] for i in self.ok_ids]} {full} ({self.peer.decode()})"


@dataclass(frozen=True, slots=True)
class Routed:
    msg_id: bytes
    services: tuple[str, ...]
    implements: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class Hello:
    identity: Identity
    commands: tuple[str, ...]
    events: tuple[str, ...]
    heartbeat_ms: int
    implements: tuple[str, ...]
    max_concurrency: int = 1000


@dataclass(frozen=True, slots=True)
class Welcome:
    heartbeat_ms: int


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    msg_id: bytes
    text: str


class Heartbeat:
    def __str__(self) -> str:
        return "heartbeat"


def _token(identity: Identity) -> bytes:
    return f"{identity.service}/{identity.instance}".encode()


def _identity(token: bytes) -> Identity:
    service, _, instance = token.decode().partition("/")
    return Identity(service, instance)
