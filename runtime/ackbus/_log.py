"""The structured fields of the runtime's per-message log lines.

Every line about one message (a handler that raised, a delivery that failed, a message
refused or not acked) carries them as ``extra=``, so a JSON formatter or a log pipeline
reads them as fields rather than parsing the text: ``message_id`` (hex), ``message_type``,
``service`` (the service of the endpoint or hub that logs) and ``attempt``::

    logging.basicConfig(format="%(levelname)s %(service)s %(message_type)s "
                        "%(message_id)s #%(attempt)s %(message)s")

Only the per-message lines have them: a format that names them fits only those, and a
handler that formats every line should use a formatter that fills in what is missing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["message_fields"]


def message_fields(
    message_id: bytes, message_type: str, service: str, attempt: int
) -> dict[str, Any]:
    """The ``extra=`` of a log line about one message."""
    return {
        "message_id": message_id.hex(),
        "message_type": message_type,
        "service": service,
        "attempt": attempt,
    }
