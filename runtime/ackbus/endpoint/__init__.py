"""The endpoint: one per service instance; sends, receives, acknowledges.

:class:`Endpoint` drives the sans-IO :class:`~ackbus.core.endpoint_protocol.EndpointProtocol`
over asyncio and the transport. Its rooms: ``_endpoint.py`` (the facade: construction,
registration, start and close), ``_send.py`` (the send path and settling reports),
``_receive.py`` (decoding input, running handlers), ``_links.py`` (hub links and the
protocol's actions toward hubs), ``_durable.py`` (durable mode, through :class:`Hooks`),
``_base.py`` (the state they share).
"""

from ..core.endpoint_protocol import EndpointStats
from ..wire import JSON_ENCODING
from ._endpoint import Endpoint

__all__ = ["JSON_ENCODING", "Endpoint", "EndpointStats"]
