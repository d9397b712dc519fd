"""The ``ackbus`` command.

Each subcommand is a function ``_<name>(args) -> int`` registered in :func:`parser`;
heavy imports happen inside it, so ``ackbus --help`` stays fast and the runtime does
not import the generator unless ``ackbus gen`` runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The argument parser. A subcommand is ``sub.add_parser(name)`` with
    ``set_defaults(run=_name)``; ``hub`` and ``dead-letters`` belong here beside ``gen``."""
    root = argparse.ArgumentParser(
        prog="ackbus", description="Schema-first, typed, reliable messaging over ZeroMQ."
    )
    root.add_argument("--version", action="version", version=f"ackbus {__version__}")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "gen",
        help="generate typed code from .proto files",
        description=(
            "Run protoc with the Python, mypy-protobuf and ackbus generators. ackbus's own "
            '.proto files (import "ackbus/options.proto") are on the include path. '
            "Nothing is written unless every file generates."
        ),
    )
    gen.add_argument(
        "-I",
        "--proto-path",
        dest="include",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="folder to resolve imports and file names from (repeatable; default: .)",
    )
    gen.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    gen.add_argument("files", nargs="+", metavar="FILE.proto")
    gen.set_defaults(run=_gen)

    hub = sub.add_parser(
        "hub",
        help="run a hub",
        description="Run a standalone hub: a stateless router between endpoints.",
    )
    hub.add_argument(
        "--bind",
        action="append",
        required=True,
        metavar="ADDRESS",
        help="address to listen on, e.g. tcp://127.0.0.1:5555 (repeatable)",
    )
    hub.add_argument("--name", default="hub", help="the hub's name in logs and acks")
    hub.add_argument(
        "--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds (default 1)"
    )
    hub.add_argument("--log-level", default="WARNING", help="Python logging level")
    hub.set_defaults(run=_hub)
    return root


def _hub(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from .hub import serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    asyncio.run(serve(args.bind, name=args.name, heartbeat=args.heartbeat))
    return 0


def _gen(args: argparse.Namespace) -> int:
    from ackbus_codegen.errors import GenerationError
    from ackbus_codegen.protoc import generate_to

    include: list[Path] = args.include or [Path()]
    try:
        written = generate_to(args.files, include=include, out=args.out)
    except GenerationError as err:
        print(f"ackbus gen: error: {err}", file=sys.stderr)
        return 1
    print(f"ackbus gen: wrote {len(written)} files to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
