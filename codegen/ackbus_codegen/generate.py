"""``generate(request) -> Generation``: the whole generator as a pure function.

It reads a protoc ``CodeGeneratorRequest``, builds one :class:`~.model.FileModel` per
file to generate and renders it with the Jinja2 template ``templates/module.j2``
(``StrictUndefined``: a name the model lacks is an error, never an empty string). It
writes nothing and prints nothing; :mod:`.plugin` turns its result into protoc's
response. Output is deterministic: the same request gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import jinja2
from google.protobuf.compiler import plugin_pb2

from . import __version__
from .events import event_subscribers
from .model import FileModel, build_file
from .naming import Namespace
from .protos import TypeIndex

__all__ = ["File", "Generation", "generate", "render"]


@dataclass(frozen=True, slots=True)
class File:
    name: str
    """Path relative to the output folder (``poker/table_ackbus.py``)."""
    content: str


@dataclass(slots=True)
class Generation:
    files: list[File] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Things left out, each naming the file, line and element."""


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ackbus_codegen", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def render(model: FileModel) -> str:
    """The text of one generated module."""
    text = _environment().get_template("module.j2").render(m=model)
    lines = [line.rstrip() for line in text.splitlines()]
    # Collapse the runs of blank lines that skipped template sections leave behind.
    out: list[str] = []
    for line in lines:
        if not line and len(out) >= 2 and not out[-1] and not out[-2]:
            continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def generate(request: plugin_pb2.CodeGeneratorRequest, *, version: str = __version__) -> Generation:
    """Generate the ``_ackbus.py`` module of every file protoc asked for.

    Raises :class:`~.errors.GenerationError` (naming file, line and both sides of a
    conflict) when a file cannot be mapped faithfully; then no file is produced.
    """
    index = TypeIndex(request.proto_file)
    subscribers = event_subscribers(index)
    out = Generation()
    type_names = Namespace("the registry of the files generated together")
    for name in request.file_to_generate:
        model = build_file(
            index.files[name],
            index,
            version=version,
            warnings=out.warnings,
            type_names=type_names,
            subscribers=subscribers,
        )
        if model.empty:
            continue
        out.files.append(File(model.output, render(model)))
    return out
