"""How an :class:`~ackbus._types.Untyped` message becomes a body on the wire.

One function shared by the endpoint and the legacy ``ReliableSocket``, so that a payload
dict is encoded the same way whichever of them sends it.
"""

from __future__ import annotations

import json

from google.protobuf import json_format

from ._types import Policy, Registry, Untyped
from .errors import SchemaError


def encode_untyped(
    registry: Registry, msg: Untyped, policy: Policy | None, default: Policy
) -> tuple[str, bytes, bool, Policy]:
    """Type name, body, whether the body is JSON, and policy of an untyped message.

    A type the registry knows (full proto name or legacy name) is converted with
    protobuf's JSON mapping and sent typed, under its spec's policy; any other travels as
    compact JSON under ``msg.type_name``, under ``default``. ``policy`` overrides both.
    Raises :class:`SchemaError` when the payload is not JSON-able or does not fit the type.
    """
    spec = registry.get(msg.type_name)
    if spec is None:
        try:
            body = json.dumps(dict(msg.payload), separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"{msg.type_name} payload is not JSON-able: {exc}") from None
        return msg.type_name, body, True, policy or default
    typed = spec.cls()
    try:
        json_format.ParseDict(dict(msg.payload), typed)
    except json_format.ParseError as exc:
        raise SchemaError(f"payload does not fit {spec.full_name}: {exc}") from None
    return spec.full_name, typed.SerializeToString(), False, policy or spec.policy
