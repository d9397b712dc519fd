"""A message's ``ackbus.Envelope`` protobuf, built from plain values (the full ack,
``ackbus.Ack``, is built in :mod:`ackbus.wire._acks`)."""

from __future__ import annotations

from collections.abc import Mapping

from .. import envelope_pb2
from ..core import Identity

__all__ = ["JSON_ENCODING", "encode_envelope"]

JSON_ENCODING = "json"
"""``Envelope.content_encoding`` of a body that is a JSON object (untyped messages)."""


def encode_envelope(
    sender: Identity,
    *,
    headers: Mapping[str, str] | None = None,
    json_body: bool = False,
    correlation_id: bytes = b"",
) -> bytes:
    """A serialized :class:`Envelope`: who sent the message, its headers, whether its
    body is JSON (:data:`JSON_ENCODING`) and the id it answers. A sender without headers
    puts the same bytes on every message, so it may build them once."""
    env = envelope_pb2.Envelope()
    env.sender.service = sender.service
    env.sender.instance = sender.instance
    if headers:
        env.headers.update(headers)
    if json_body:
        env.content_encoding = JSON_ENCODING
    if correlation_id:
        env.correlation_id = correlation_id
    return env.SerializeToString()
