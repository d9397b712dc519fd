"""Schema drift at a hub: live peers whose fingerprints of one message type differ.

Each peer's HELLO announces a fingerprint per type it handles or has sent
(``Hello.fingerprints``; :mod:`ackbus._fingerprint`). :class:`SchemaDrift` keeps them
for the registered peers and, when a HELLO announces a fingerprint of a type that a
live peer has with another value, returns a :class:`Drift` naming both, once per type
and pair of fingerprints for as long as the hub runs (a peer saying HELLO again, on
every reconnect, is not news). No I/O: the hub logs and counts what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._values import Identity

__all__ = ["Drift", "SchemaDrift"]

MAX_NOTED = 10_000
"""Most (type, fingerprint pair) disagreements remembered; past that, the memory is
cleared (a disagreement may then be logged again)."""


@dataclass(frozen=True, slots=True)
class Drift:
    """Two live peers disagree on ``msg_type``: ``peer`` (which just said HELLO) has
    ``fingerprint``, ``other`` has ``other_fingerprint``."""

    msg_type: str
    peer: Identity
    fingerprint: bytes
    other: Identity
    other_fingerprint: bytes


class SchemaDrift:
    """The fingerprints of the registered peers (module docstring)."""

    def __init__(self) -> None:
        self._by_type: dict[str, dict[bytes, tuple[Identity, bytes]]] = {}
        """Type → peer → (its identity, its fingerprint of the type)."""
        self._of_peer: dict[bytes, tuple[str, ...]] = {}
        self._noted: set[tuple[str, bytes, bytes]] = set()
        self.disagreements = 0
        """Distinct (type, pair of fingerprints) disagreements noticed between live peers."""

    def announce(
        self, peer: bytes, identity: Identity, fingerprints: Mapping[str, bytes]
    ) -> list[Drift]:
        """``peer`` registered (again) as ``identity`` with these fingerprints: the new
        disagreements with other live peers (each pair once)."""
        self.forget(peer)
        found: list[Drift] = []
        for msg_type, fp in fingerprints.items():
            holders = self._by_type.setdefault(msg_type, {})
            for other_peer, (other, other_fp) in holders.items():
                if other_fp == fp or other_peer == peer:
                    continue
                low, high = sorted((fp, other_fp))
                key = (msg_type, low, high)
                if key in self._noted:
                    continue
                if len(self._noted) >= MAX_NOTED:
                    self._noted.clear()
                self._noted.add(key)
                self.disagreements += 1
                found.append(Drift(msg_type, identity, fp, other, other_fp))
            holders[peer] = (identity, fp)
        self._of_peer[peer] = tuple(fingerprints)
        return found

    def forget(self, peer: bytes) -> None:
        """``peer`` is no longer registered."""
        for msg_type in self._of_peer.pop(peer, ()):
            holders = self._by_type.get(msg_type)
            if holders is not None:
                holders.pop(peer, None)
                if not holders:
                    del self._by_type[msg_type]

    def disagreeing(self) -> dict[str, int]:
        """Types the live peers hold with more than one fingerprint now → how many
        distinct fingerprints (for ``ackbus status``)."""
        out: dict[str, int] = {}
        for msg_type, holders in self._by_type.items():
            n = len({fp for _, fp in holders.values()})
            if n > 1:
                out[msg_type] = n
        return out
