"""A home-grown legacy layout, given as two typed functions.

The built-in formats (:class:`~ackbus.legacy.LegacyFormat`) cover the JSON envelope and
``[topic, payload]`` frames. Every other layout — the zguide weather server's
``"10001 23 45"`` text frames, a fixed binary struct, a CSV line — is a
:class:`CustomFormat`: a function from frames to a message and one from a message to
frames, which the codec and the bridge take wherever they take a ``LegacyFormat``::

    def weather_from_frames(frames: Sequence[bytes]) -> WeatherUpdate:
        zipcode, temperature, humidity = frames[0].split()
        return WeatherUpdate(
            zipcode=int(zipcode), temperature=int(temperature), relhumidity=int(humidity)
        )

    def weather_to_frames(msg: WeatherUpdate) -> list[bytes]:
        return [b"%05d %d %d" % (msg.zipcode, msg.temperature, msg.relhumidity)]

    WEATHER = CustomFormat(weather_from_frames, weather_to_frames)
    bridge.subscribe("tcp://weather:5556", fmt=WEATHER, topics=[b"10001 "])

The codec keeps its contract around the user's functions: whatever ``decode`` raises
(a ``ValueError`` from ``int("x")``, an ``IndexError`` from a missing frame, ...) becomes
a :class:`~ackbus.legacy.LegacyFormatError` naming the format, so the bridge counts
and drops bad input as it does for the built-in formats; a ``decode`` that returns
something other than a protobuf message is one too. An ``encode`` that raises, or
returns something other than a list of ``bytes``, is a :class:`~ackbus.SchemaError`.
Such layouts carry no message id, sender or time (as the topic formats do not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

__all__ = ["CustomFormat"]

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class CustomFormat(Generic[M]):
    """A legacy layout of the user's: ``decode`` turns a multipart into a message,
    ``encode`` a message into a multipart (``None``: this layout is only read, as from a
    legacy PUB). ``name`` names it in errors and logs (default: ``decode``'s name)."""

    decode: Callable[[Sequence[bytes]], M]
    encode: Callable[[M], Sequence[bytes]] | None = None
    name: str = ""

    @property
    def label(self) -> str:
        """What errors and logs call it."""
        return self.name or getattr(self.decode, "__qualname__", "a custom format")
