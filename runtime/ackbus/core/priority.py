"""Priority with aging: the one rule every queue of ackbus orders its waiting messages by.

A message of priority ``p`` that starts waiting at ``t`` queues as if it had come
``p * PRIORITY_STEP`` seconds earlier: its *virtual arrival* :func:`aging_key`, and
the earliest virtual arrival goes first (ties first come, first served). So a higher
priority overtakes the waiters that came less than ``PRIORITY_STEP`` seconds per level
before it, while one that has waited longer than that goes ahead of it: a steady stream
of high priorities cannot starve the rest. The sender's window line
(:mod:`ackbus._window`), the hub's hold queues (:mod:`ackbus.core.holding`) and a
receiver's admission under its ``max_concurrency``
(:class:`~ackbus.core.endpoint_protocol.EndpointProtocol`) all use it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PRIORITY_STEP", "aging_key"]

PRIORITY_STEP: Final = 0.1
"""Seconds of waiting one level of priority is worth."""


def aging_key(arrival: float, priority: int) -> float:
    """The virtual arrival of a message of ``priority`` that starts waiting at
    ``arrival``: the earliest goes first."""
    return arrival - priority * PRIORITY_STEP
