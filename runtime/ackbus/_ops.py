"""The operator's commands (docs/operations.md): where they find message types
(``--import``, ``-I``).

Each imports what it needs inside, so ``ackbus --help`` stays fast. Every failure is one
line on standard error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._schemas import Schemas

__all__ = ["add_proto_path", "add_schemas", "schemas_of"]


def add_schemas(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE`` and ``-I DIR``: where the operator's commands find message types."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="a generated module defining message types, e.g. poker.table_pb2 (repeatable; "
        "its folder must be on PYTHONPATH)",
    )
    add_proto_path(
        parser,
        "compile every .proto under DIR for its message types (repeatable; needs ackbus[codegen])",
    )


def add_proto_path(parser: argparse.ArgumentParser, text: str) -> None:
    """``-I/--proto-path DIR`` (repeatable), into ``args.include``."""
    parser.add_argument(
        "-I",
        "--proto-path",
        dest="include",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help=text,
    )


def schemas_of(args: argparse.Namespace) -> Schemas | None:
    """The message types ``--import`` and ``-I`` give (None when neither is given)."""
    from ._schemas import Schemas

    if not args.imports and not args.include:
        return None
    return Schemas(args.imports, args.include)
