"""``ackbus docs``: an AsyncAPI 3.0 document and a static HTML catalogue from schemas.

:func:`write_docs` compiles the files with protoc (imports and source info, ackbus's own
protos on the include path, as ``ackbus gen`` does), builds the :mod:`.catalogue` and
writes ``asyncapi.yaml`` (:mod:`.asyncapi`) and ``index.html`` (``templates/
catalogue.html.j2``: one self-contained page, its style and search script inline, no
network). Output is deterministic: no timestamps.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import jinja2
import yaml

from . import __version__, asyncapi
from .catalogue import Catalogue, build
from .protoc import descriptor_set

__all__ = ["render_html", "render_yaml", "write_docs"]

DEFAULT_TITLE = "ackbus messages"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ackbus_codegen", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class _Dumper(yaml.SafeDumper):
    """Block style, text of several lines as ``|`` blocks, keys in the order given, and
    no anchors: a value shared by two operations is written out twice."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render_yaml(doc: dict[str, object]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def render_html(cat: Catalogue, *, title: str) -> str:
    return (
        _environment()
        .get_template("catalogue.html.j2")
        .render(cat=cat, title=title, version=__version__)
    )


def write_docs(
    files: Sequence[str],
    *,
    include: Sequence[Path],
    out: Path,
    title: str = DEFAULT_TITLE,
    version: str = "unversioned",
) -> list[Path]:
    """Write ``out/asyncapi.yaml`` and ``out/index.html`` for ``files``; return them.
    Raises :class:`~.errors.GenerationError` when protoc fails (nothing is written)."""
    fds = descriptor_set(files, include)
    names = [_proto_name(f, include) for f in files]
    cat = build(fds, names)
    texts = {
        "asyncapi.yaml": render_yaml(asyncapi.document(cat, title=title, version=version)),
        "index.html": render_html(cat, title=title),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in texts.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written


def _proto_name(file: str, include: Sequence[Path]) -> str:
    """The name protoc gives ``file``: relative to the include folder holding it, or as
    given when it names no file on disk (it is then relative to an include folder)."""
    path = Path(file)
    if path.exists():
        for folder in include:
            if path.resolve().is_relative_to(folder.resolve()):
                return path.resolve().relative_to(folder.resolve()).as_posix()
    return path.as_posix()
