"""The keyword options of :class:`~ackbus.endpoint.Endpoint`, as a ``TypedDict``.

Wrappers that build an endpoint for their caller (:class:`~ackbus.blocking.BlockingEndpoint`)
take ``**options: Unpack[EndpointOptions]``, so a misspelt or mistyped option fails the type
check as it does on ``Endpoint`` itself. The keys and types are exactly the keyword-only
parameters of ``Endpoint.__init__`` (tests/runtime/test_options.py compares them); the
defaults are the endpoint's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypedDict

from ._compat import History
from ._types import Policy, Registry
from .middleware import Middleware
from .store import Store
from .transport import Backend, TransportOptions
from .wire import Limits

__all__ = ["EndpointOptions"]


class EndpointOptions(TypedDict, total=False):
    """``Endpoint(service, hubs, **options)``: every option may be left out."""

    instance: str | None
    policy: Policy
    registry: Registry | None
    window: int
    max_concurrency: int | None
    heartbeat: float
    misses: int
    connect_timeout: float
    dedupe_capacity: int
    dedupe_ttl: float
    backend: Backend | None
    options: TransportOptions | None
    limits: Limits
    seed: int | None
    store: str | Store | None
    keys: str | os.PathLike[str] | None
    hub_key: str | os.PathLike[str] | None
    workers: int | None
    stall_threshold: float | None
    middleware: Sequence[Middleware]
    metrics: int | None
    schema_history: History | Sequence[History] | None
