"""Message ids: 16 bytes, unique across endpoints and restarts, cheap to make.

``os.urandom(16)`` is a system call per message, on a sender's hot path. An
:class:`IdSource` draws 16 random bytes once, as its start on a cycle of all 2**128
values, and steps through that cycle by a fixed odd constant (a Weyl sequence): every
step changes all bytes, so ids look random and their short hex prefixes stay distinct
(``ackbus dead-letters show 87b0c0f973``), and a source never repeats an id. Two sources
(two endpoints, or one endpoint restarted) collide only if their random starts fall
within as many steps of each other as they make ids: about n / 2**128. Ids are opaque:
nothing may read order or meaning into them."""

from __future__ import annotations

import os

from ._codec import ID_SIZE

__all__ = ["IdSource"]

_BITS = 8 * ID_SIZE
_MASK = (1 << _BITS) - 1
_STEP = 0x9E3779B97F4A7C15F39CC0605CEDC835
"""2**128 divided by the golden ratio, odd: consecutive ids differ in every byte and
the sequence visits all 2**128 values before repeating."""


class IdSource:
    """Makes message ids: a random start, then a fixed odd step per id."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = int.from_bytes(os.urandom(ID_SIZE), "big")

    def next(self) -> bytes:
        """A new 16-byte id."""
        value = self._next = (self._next + _STEP) & _MASK
        return value.to_bytes(ID_SIZE, "big")
