"""SchemaDrift (core/drift.py): live peers' fingerprints compared, each disagreement once."""

from __future__ import annotations

from ackbus.core._values import Identity
from ackbus.core.drift import SchemaDrift

A, B, C = Identity("bank", "a"), Identity("bank", "b"), Identity("bank", "c")


def test_a_disagreement_is_reported_once_per_type_and_pair() -> None:
    drift = SchemaDrift()
    assert drift.announce(b"a", A, {"bank.Deposit": b"old", "bank.Other": b"x"}) == []
    found = drift.announce(b"b", B, {"bank.Deposit": b"new", "bank.Other": b"x"})
    assert [(d.msg_type, d.peer, d.fingerprint, d.other, d.other_fingerprint) for d in found] == [
        ("bank.Deposit", B, b"new", A, b"old")
    ]
    assert drift.announce(b"b", B, {"bank.Deposit": b"new"}) == []  # HELLO again
    assert drift.announce(b"c", C, {"bank.Deposit": b"new"}) == []  # the same pair
    assert drift.disagreements == 1
    assert drift.disagreeing() == {"bank.Deposit": 2}


def test_a_forgotten_peer_no_longer_counts() -> None:
    drift = SchemaDrift()
    drift.announce(b"a", A, {"bank.Deposit": b"old"})
    drift.forget(b"a")
    assert drift.announce(b"b", B, {"bank.Deposit": b"new"}) == []
    assert drift.disagreeing() == {}
    # A peer re-registering with another fingerprint is not compared with itself.
    assert drift.announce(b"b", B, {"bank.Deposit": b"newer"}) == []
