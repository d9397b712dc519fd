"""ackbus: schema-first, typed, reliable messaging for Python microservices over ZeroMQ.

``Endpoint``, ``Hub``, ``BlockingEndpoint`` and their stats are imported on first use
(a module ``__getattr__``): every generated module imports ``ackbus``, and a module that
only declares types and policies should not pay for the endpoint, the hub and ZeroMQ.
"""

import typing as _typing

from ._client import AsyncClient, BlockingClient, Client, build
from ._fields import field_error
from ._types import (
    AsyncBus,
    BlockingBus,
    CallOptions,
    CommandOptions,
    Context,
    DeliveryReport,
    DeliveryStatus,
    Handler,
    Identity,
    Kind,
    MessageSpec,
    MethodSpec,
    Policy,
    PublishOptions,
    Registry,
    SubscriberPolicy,
    Untyped,
    declare_rpcs,
    rpcs_taking,
    unimplemented,
)
from ._version import __version__
from .errors import (
    AccessFileError,
    AckbusError,
    AckTimeout,
    AddressError,
    AmbiguousMethod,
    Cancelled,
    ClosedError,
    ConnectTimeout,
    DeliveryError,
    Expired,
    InsecureBindError,
    KeyFileError,
    LocalProtocolError,
    NoRoute,
    OutcomeUnknown,
    ProtocolError,
    Reject,
    Rejected,
    RemoteProtocolError,
    RetryLater,
    SchemaError,
    SendWindowTimeout,
    StoreError,
    Unauthorized,
    WaitTimeout,
)

if _typing.TYPE_CHECKING:
    from .app import App
    from .blocking import BlockingEndpoint
    from .endpoint import Endpoint, EndpointStats
    from .hub import Hub, HubStats

_LAZY = {
    "App": "ackbus.app",
    "BlockingEndpoint": "ackbus.blocking",
    "Endpoint": "ackbus.endpoint",
    "EndpointStats": "ackbus.endpoint",
    "Hub": "ackbus.hub",
    "HubStats": "ackbus.hub",
}
"""Names imported on first access, and the module each comes from."""

if not _typing.TYPE_CHECKING:  # mypy sees the imports above; a __getattr__ would make typos Any

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later accesses skip this function
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AccessFileError",
    "AckTimeout",
    "AckbusError",
    "AddressError",
    "AmbiguousMethod",
    "App",
    "AsyncBus",
    "AsyncClient",
    "BlockingBus",
    "BlockingClient",
    "BlockingEndpoint",
    "CallOptions",
    "Cancelled",
    "Client",
    "ClosedError",
    "CommandOptions",
    "ConnectTimeout",
    "Context",
    "DeliveryError",
    "DeliveryReport",
    "DeliveryStatus",
    "Endpoint",
    "EndpointStats",
    "Expired",
    "Handler",
    "Hub",
    "HubStats",
    "Identity",
    "InsecureBindError",
    "KeyFileError",
    "Kind",
    "LocalProtocolError",
    "MessageSpec",
    "MethodSpec",
    "NoRoute",
    "OutcomeUnknown",
    "Policy",
    "ProtocolError",
    "PublishOptions",
    "Registry",
    "Reject",
    "Rejected",
    "RemoteProtocolError",
    "RetryLater",
    "SchemaError",
    "SendWindowTimeout",
    "StoreError",
    "SubscriberPolicy",
    "Unauthorized",
    "Untyped",
    "WaitTimeout",
    "__version__",
    "build",
    "declare_rpcs",
    "field_error",
    "rpcs_taking",
    "unimplemented",
]
