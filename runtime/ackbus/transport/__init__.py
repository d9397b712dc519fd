"""The transport layer: links (DEALER, client side) and listeners (ROUTER, server side)
over ZeroMQ or in memory, with coalesced sends and explicit backpressure.
:class:`DefaultBackend` (what a hub and an endpoint use unless given another) speaks
both: ZeroMQ addresses, and ``inmem://`` within one process.

See :mod:`ackbus.transport._base` for the contract both backends honour.
"""

from ._base import (
    Backend,
    CurveKeys,
    Link,
    Listener,
    OnConnection,
    OnReceive,
    OnUnroutable,
    TransportOptions,
)
from ._default import DefaultBackend
from ._memory import MemoryBackend
from ._zmq import ZmqBackend

__all__ = [
    "Backend",
    "CurveKeys",
    "DefaultBackend",
    "Link",
    "Listener",
    "MemoryBackend",
    "OnConnection",
    "OnReceive",
    "OnUnroutable",
    "TransportOptions",
    "ZmqBackend",
]
