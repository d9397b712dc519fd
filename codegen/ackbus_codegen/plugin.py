"""``protoc-gen-ackbus``: the protoc plugin around :func:`.generate.generate`.

protoc runs it with a serialized ``CodeGeneratorRequest`` on stdin and reads a
``CodeGeneratorResponse`` from stdout. Errors go into the response, so protoc prints
them (``--ackbus_out: poker/table.proto:12: ...``), exits non-zero and writes no file;
warnings go to stderr.
"""

from __future__ import annotations

import sys

# Imported for its side effect, before any request is parsed: it registers the ackbus
# option extensions, so that options in a schema parse as extensions rather than stay
# unknown fields the model cannot see.
import ackbus.options_pb2  # noqa: F401
from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

from .errors import GenerationError
from .generate import generate

__all__ = ["main", "run"]

_FEATURES = (
    plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    | plugin_pb2.CodeGeneratorResponse.FEATURE_SUPPORTS_EDITIONS
)


def run(data: bytes) -> tuple[bytes, list[str]]:
    """A serialized response for a serialized request, and the warnings."""
    request = plugin_pb2.CodeGeneratorRequest.FromString(data)
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=_FEATURES,
        minimum_edition=descriptor_pb2.EDITION_PROTO2,
        maximum_edition=descriptor_pb2.EDITION_2024,
    )
    warnings: list[str] = []
    try:
        result = generate(request)
    except GenerationError as err:
        response.error = str(err)
    else:
        warnings = result.warnings
        for f in result.files:
            response.file.add(name=f.name, content=f.content)
    return response.SerializeToString(), warnings


def main() -> int:
    data, warnings = run(sys.stdin.buffer.read())
    for line in warnings:
        print(f"protoc-gen-ackbus: warning: {line}", file=sys.stderr)
    sys.stdout.buffer.write(data)
    return 0
