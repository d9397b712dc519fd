"""Legacy formats and existing ZeroMQ services (docs/legacy.md).

* :class:`LegacyCodec`: typed messages ⇄ the legacy JSON envelope, ``[topic, payload]``
  frames and dicts, mapped through a :class:`~ackbus.Registry`, and any home-grown
  layout given as two functions (:class:`CustomFormat`);
* :class:`Bridge` (:mod:`ackbus.legacy.bridge`): puts a plain ZeroMQ service (PUB/SUB,
  PUSH/PULL, REQ/REP) on the bus;
* :func:`wrap_service` and :class:`LegacyServiceMixin`: register an existing object's
  ``handle_<type>`` methods on an endpoint in one call;
* :class:`ReliableSocket` and :func:`send_with_ack`: acknowledged sends from code that
  owns a plain pyzmq DEALER socket.
"""

from ._codec import (
    FieldCase,
    LegacyCodec,
    LegacyFormat,
    LegacyFormatError,
    LegacyMessage,
    PayloadFormat,
)
from ._custom import CustomFormat
from ._reliable import ReliableSocket, send_with_ack
from ._wrap import LegacyServiceMixin, handler_name, wrap_service
from .bridge import Bridge, BridgeStats, LegacySocket, SocketRole

__all__ = [
    "Bridge",
    "BridgeStats",
    "CustomFormat",
    "FieldCase",
    "LegacyCodec",
    "LegacyFormat",
    "LegacyFormatError",
    "LegacyMessage",
    "LegacyServiceMixin",
    "LegacySocket",
    "PayloadFormat",
    "ReliableSocket",
    "SocketRole",
    "handler_name",
    "send_with_ack",
    "wrap_service",
]
