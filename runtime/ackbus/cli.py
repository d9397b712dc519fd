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
from typing import TYPE_CHECKING

from . import _ops
from ._version import __version__

if TYPE_CHECKING:
    from .transport import TransportOptions

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The argument parser. A subcommand is ``sub.add_parser(name)`` with
    ``set_defaults(run=_name)``; ``hub``, ``keys`` and ``dead-letters`` belong here beside
    ``gen``."""
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
            "Nothing is written unless every file generates. Without -I, the folder a "
            "file's package starts from is used (schemas/ for schemas/orders/orders.proto "
            "declaring package orders); a file whose folders do not follow its package "
            "needs -I."
        ),
    )
    _add_proto_path(gen)
    gen.add_argument(
        "--check",
        action="store_true",
        help=(
            "write nothing; exit 1, listing the files, when those in -o are missing or "
            "differ from what the schemas generate now (for CI)"
        ),
    )
    gen.add_argument(
        "--include-path",
        action=_PrintIncludePath,
        help=(
            "print the folder holding ackbus/options.proto (this installed ackbus's copy) "
            "and exit: give it to protoc as -I"
        ),
    )
    gen.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    gen.add_argument("files", nargs="+", metavar="FILE.proto")
    gen.set_defaults(run=_gen)

    breaking = sub.add_parser(
        "breaking",
        help="refuse schema changes that break peers running the old code",
        description=(
            "Compare FILE.proto against their old versions (a folder holding them at the "
            "same paths, or a descriptor set from protoc --descriptor_set_out "
            "--include_source_info) and list each change that breaks old peers: a field "
            "removed without reserved, renumbered or retyped; a message, service or rpc "
            "removed or renamed; an rpc's input type or kind changed. Exit 1 on a break."
        ),
    )
    breaking.add_argument(
        "--against", type=Path, required=True, metavar="DIR|SET", help="the old schemas"
    )
    _add_proto_path(breaking)
    breaking.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="RULE|NAME",
        help="accept the breaks of a rule (FIELD_REMOVED) or of an element (poker.X.y)",
    )
    breaking.add_argument("files", nargs="+", metavar="FILE.proto")
    breaking.set_defaults(run=_breaking)

    docs = sub.add_parser(
        "docs",
        help="write an AsyncAPI document and an HTML catalogue of .proto files",
        description=(
            "Write DIR/asyncapi.yaml (AsyncAPI 3.0: channels and operations of every "
            "command, event and request/reply, payloads as JSON Schema, effective policies, "
            "subscribers, legacy names, comments) and DIR/index.html (one static, searchable "
            "page). ackbus's own .proto files are on the include path."
        ),
    )
    _add_proto_path(docs)
    docs.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    docs.add_argument("--title", default="ackbus messages", help="the documents' title")
    docs.add_argument(
        "--api-version",
        default="unversioned",
        metavar="TEXT",
        help="info.version of the AsyncAPI document (default: unversioned)",
    )
    docs.add_argument("files", nargs="+", metavar="FILE.proto")
    docs.set_defaults(run=_docs)

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
    hub.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help=(
            "run as a CURVE server with DIR/hub.key_secret, admitting only the client keys "
            "in DIR/clients/*.key (docs/security.md)"
        ),
    )
    hub.add_argument(
        "--access",
        type=Path,
        metavar="FILE",
        help=(
            "a TOML file saying what each client key may do: [clients.NAME] services=[...] "
            "send=[patterns] (needs --keys; read again on SIGHUP; docs/security.md)"
        ),
    )
    hub.add_argument(
        "--insecure",
        action="store_true",
        help=(
            "listen on a non-loopback address without --keys (refused otherwise): on a "
            "network you trust only, since anyone who reaches the port may register as any "
            "service"
        ),
    )
    hub.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics and the status page "
        "on /status (needs ackbus[metrics]; docs/operations.md)",
    )
    hub.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="the address the metrics port binds (default 127.0.0.1)",
    )
    hub.add_argument("--name", default="hub", help="the hub's name in logs and acks")
    hub.add_argument(
        "--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds (default 1)"
    )
    hub.add_argument(
        "--stall-limit",
        type=float,
        default=60.0,
        metavar="S",
        help="forget an instance silent this long even while its connection is up (default 60)",
    )
    hub.add_argument(
        "--zmtp-heartbeat",
        type=float,
        default=0.0,
        metavar="S",
        help="ZeroMQ heartbeats every S seconds on each connection, which drop a stopped "
        "(SIGSTOP) instance's connection after about 4 S, so it is forgotten then rather "
        "than kept as stalled up to --stall-limit; they cost the hub about 1.5%% of one core "
        "per thousand instances at 1 s (default 0: off)",
    )
    hub.add_argument(
        "--max-held",
        type=int,
        default=10_000,
        metavar="N",
        help="messages held per service while its instances are full (default 10000)",
    )
    hub.add_argument(
        "--max-instances-per-key",
        type=int,
        default=None,
        metavar="N",
        help="instances registered at once with one client key, with --keys "
        "(default 64; 0: no limit)",
    )
    hub.add_argument("--log-level", default="WARNING", help="Python logging level")
    hub.set_defaults(run=_hub)

    keys = sub.add_parser(
        "keys",
        help="make and show CURVE keys",
        description=(
            "CURVE keypairs as ZeroMQ certificate files: NAME.key (public) and "
            "NAME.key_secret (secret, mode 0600). docs/security.md says where each goes."
        ),
    )
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    generate = keys_sub.add_parser(
        "generate",
        help="write a new keypair",
        description="Write DIR/NAME.key and DIR/NAME.key_secret (a hub's keypair is named hub).",
    )
    generate.add_argument("name", metavar="NAME")
    generate.add_argument("--dir", type=Path, default=Path(), help="folder (default: .)")
    generate.add_argument("--force", action="store_true", help="replace existing files")
    generate.set_defaults(run=_keys)
    show = keys_sub.add_parser(
        "show", help="print a key file's public key", description="Print the public key (Z85)."
    )
    show.add_argument("file", type=Path, metavar="FILE")
    show.set_defaults(run=_keys)

    run = sub.add_parser(
        "run",
        help="run the service an App declares (module:app), stopping gracefully on SIGTERM",
        description="Run an ackbus.App: flags override ACKBUS_* variables (docs/running.md).",
    )
    from ._settings import add_arguments

    add_arguments(run)
    run.set_defaults(run=_run)

    _ops.register(sub)  # send, request, status, tail

    dead = sub.add_parser(
        "dead-letters",
        help="list, show, replay or purge a durable store's dead letters",
        description=(
            "Messages that failed for good (timeout, rejected, no route, expired) are kept "
            "in the sending endpoint's store. Works while the service runs."
        ),
    )
    dead_sub = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    store_help = "the store: sqlite:///path/to.db (or a plain file path), or postgresql://..."
    for action, text in (
        ("list", "one line per dead letter, oldest failure first"),
        ("show", "everything about dead letters: error, envelope, body"),
        ("replay", "send dead letters again through a hub (new ids); remove the acked ones"),
        ("purge", "delete dead letters"),
    ):
        p = dead_sub.add_parser(action, help=text, description=text)
        p.add_argument("--store", required=True, help=store_help)
        if action != "list":
            p.add_argument("ids", nargs="*", metavar="ID", help="message ids or hex prefixes")
            p.add_argument("--all", action="store_true", help="every dead letter")
        if action == "show":
            _ops.add_schemas(p)
        if action == "replay":
            p.add_argument("--hub", required=True, metavar="ADDRESS", help="hub to send through")
            p.add_argument(
                "--timeout",
                type=_positive,
                default=30.0,
                help="seconds to wait, for the hub and for each message's ack (default 30)",
            )
        p.set_defaults(run=_dead_letters)
    return root


_positive = _ops.seconds
"""A number of seconds above 0, for a ``--timeout`` flag."""


def _dead_letters(args: argparse.Namespace) -> int:
    import asyncio

    from ._dead_letters import describe, open_admin, replay, summary_line
    from .errors import AckbusError

    spec: str = args.store
    try:
        store = open_admin(spec)
        letters = store.dead_letters()
        if args.action == "list":
            for d in letters:
                print(summary_line(d))
            print(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''}")
            return 0
        if args.all == bool(args.ids):
            print(f"ackbus dead-letters {args.action}: give message ids or --all", file=sys.stderr)
            return 2
        if not args.all:
            chosen = []
            for prefix in args.ids:
                found = [d for d in letters if d.msg_id.hex().startswith(prefix.lower())]
                if len(found) != 1:
                    what = "no dead letter" if not found else f"{len(found)} dead letters"
                    print(f"ackbus dead-letters: {what} match {prefix!r}", file=sys.stderr)
                    return 1
                chosen.extend(found)
            letters = chosen
        if args.action == "show":
            schemas = _ops.schemas_of(args)
            print("\n\n".join(describe(d, schemas) for d in letters))
        elif args.action == "purge":
            removed = store.remove_dead_letters([d.msg_id for d in letters])
            print(f"purged {removed} dead letter{'s' if removed != 1 else ''}")
        else:
            results = asyncio.run(replay(store, letters, args.hub, timeout=args.timeout))
            for d, report in results:
                outcome = "acked" if report else f"failed again: {report.error}"
                print(f"{d.msg_id.hex()} -> {report.message_id.hex()}  {d.msg_type}  {outcome}")
            failed = sum(1 for _, r in results if not r)
            print(f"replayed {len(results)}: {len(results) - failed} acked, {failed} failed")
            return 1 if failed else 0
    except (AckbusError, ValueError) as err:  # ValueError: a malformed --store URL
        # a store that cannot open, no hub within --timeout (ConnectTimeout), a bad
        # --hub address: one line saying what, no traceback
        print(f"ackbus dead-letters: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ackbus dead-letters: interrupted", file=sys.stderr)
        return 130
    return 0


def _run(args: argparse.Namespace) -> int:
    from .app import run_command

    return run_command(args)


def _keys(args: argparse.Namespace) -> int:
    from .errors import KeyFileError
    from .transport._keys import generate_keys, load_public_key

    try:
        if args.action == "generate":
            public, secret = generate_keys(args.dir, args.name, force=args.force)
            print(f"wrote {public} (public) and {secret} (secret, mode 0600)")
        else:
            print(load_public_key(args.file).decode("ascii"))
    except KeyFileError as err:
        print(f"ackbus keys {args.action}: error: {err}", file=sys.stderr)
        return 1
    return 0


def _hub(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from .errors import AccessFileError, AddressError, InsecureBindError, KeyFileError

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    metrics = None
    if args.metrics_port is not None:
        import importlib.util

        if importlib.util.find_spec("prometheus_client") is None:
            print(
                "ackbus hub --metrics-port needs prometheus-client: pip install 'ackbus[metrics]'",
                file=sys.stderr,
            )
            return 2
        metrics = (args.metrics_addr, args.metrics_port)
    try:
        asyncio.run(
            _serve_hub(
                args.bind,
                name=args.name,
                heartbeat=args.heartbeat,
                keys=args.keys,
                access=args.access,
                insecure=args.insecure,
                metrics=metrics,
                stall_limit=args.stall_limit,
                zmtp_heartbeat=args.zmtp_heartbeat,
                max_held=args.max_held,
                max_instances_per_key=args.max_instances_per_key,
            )
        )
    except (AddressError, KeyFileError, InsecureBindError, AccessFileError) as err:
        # a port in use, a typo, a missing key file, no keys on a public address, a bad
        # access file: the user fixes it, no traceback
        print(f"ackbus hub: error: {err}", file=sys.stderr)
        return 1
    return 0


_CODEGEN_MODULES = {
    "grpc_tools": "grpcio-tools",
    "mypy_protobuf": "mypy-protobuf",
    "jinja2": "jinja2",
    "yaml": "pyyaml",
}
"""What ``ackbus gen``, ``docs`` and ``breaking`` import or run (module: the distribution
that provides it): the ``codegen`` extra, which ``pip install ackbus`` leaves out."""


def _codegen_missing(command: str) -> bool:
    """Whether the ``codegen`` extra is missing, after saying so and what to install."""
    missing = _missing_codegen()
    if missing:
        print(
            f"ackbus {command} needs the code generator: pip install 'ackbus[codegen]' "
            f"(missing: {', '.join(missing)})",
            file=sys.stderr,
        )
    return bool(missing)


def _missing_codegen() -> list[str]:
    """The distributions of the ``codegen`` extra that are not installed."""
    import importlib.util

    missing = []
    for module, dist in _CODEGEN_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # blocked or half-imported: unusable either way
            found = False
        if not found:
            missing.append(dist)
    return missing


def _zmtp_options(seconds: float) -> TransportOptions | None:
    """``--zmtp-heartbeat S``: PINGs every S, a connection that answers none for 3 S
    dropped (None: the hub's defaults, ZMTP heartbeats off)."""
    from .transport import TransportOptions

    if seconds <= 0:
        return None
    ms = max(1, round(seconds * 1000))
    return TransportOptions(zmtp_heartbeat_ms=ms, zmtp_timeout_ms=3 * ms)


async def _serve_hub(
    bind: Sequence[str],
    *,
    name: str,
    heartbeat: float,
    keys: Path | None = None,
    access: Path | None = None,
    insecure: bool = False,
    metrics: tuple[str, int] | None = None,
    stall_limit: float = 60.0,
    zmtp_heartbeat: float = 0.0,
    max_held: int = 10_000,
    max_instances_per_key: int | None = None,
) -> None:
    """Run a hub until SIGINT or SIGTERM (SIGHUP reads the access file again); print
    one ``listening on`` line when ready. Raises :class:`~ackbus.errors.AddressError`
    (cannot bind), :class:`~ackbus.errors.KeyFileError` (``--keys``) or
    :class:`~ackbus.errors.AccessFileError` (``--access``) before that line."""
    import asyncio
    import signal

    from .hub import Hub

    loop = asyncio.get_running_loop()
    _raise_open_files()
    hub = Hub(
        bind,
        name=name,
        heartbeat=heartbeat,
        keys=keys,
        access=access,
        insecure=insecure,
        stall_limit=stall_limit,
        max_held=max_held,
        max_instances_per_key=max_instances_per_key,
        options=_zmtp_options(zmtp_heartbeat),
    )
    hub.announce = False  # the line printed below says it, once
    async with hub:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(hub.close()))
        if access is not None:
            loop.add_signal_handler(signal.SIGHUP, hub.reload_access)
        curve = ""
        if keys is None and insecure:
            curve = " (insecure: no keys, anyone who reaches it may register as any service)"
        if keys is not None:
            curve = f" (CURVE: {hub.enrolled} client keys enrolled in {keys / 'clients'})"
        if access is not None:
            curve += f"; access file {access}"
        server = None
        if metrics is not None:
            from ._status_page import serve

            server = serve(metrics[1], hub, addr=metrics[0])
            web = f"http://{metrics[0]}:{server.port}"
            curve += f"; metrics on {web}/metrics, status page on {web}/status"
        print(
            f"ackbus hub {hub.identity} listening on {' '.join(hub.addresses)}{curve}", flush=True
        )
        try:
            await hub.serve_forever()
        finally:
            if server is not None:
                server.close()


def _raise_open_files() -> None:
    """Let the hub hold as many connections as the system allows: the soft limit on open
    descriptors (often 1,024) up to the hard one. Each connection is a descriptor, and a
    hub at its limit accepts no new endpoint until one closes (issue 18 locked a hub out
    with 1,100 idle connections). Connections that never complete ZeroMQ's handshake are
    dropped after 5 s either way (``Hub``'s ``HANDSHAKE_MS``)."""
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("ackbus.hub").warning(
                "could not raise the open-files limit from %d to %d: %s", soft, hard, exc
            )
            return
        logging.getLogger("ackbus.hub").info("open-files limit raised from %d to %d", soft, hard)


def _include_path() -> Path:
    """The folder holding ``ackbus/options.proto`` and ackbus's other ``.proto`` files: the
    parent of the installed ``ackbus`` package (site-packages, or ``runtime/`` in an
    editable install). Raises :class:`FileNotFoundError` when the package's copy is not a
    file on disk (a zipped install)."""
    package = Path(__file__).resolve().parent
    if not (package / "options.proto").is_file():
        raise FileNotFoundError(f"no options.proto in {package}: ackbus is not installed as files")
    return package.parent


class _PrintIncludePath(argparse.Action):
    """``ackbus gen --include-path``: print :func:`_include_path` and exit, as ``--version``
    does, without -o or files."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        try:
            found = _include_path()
        except FileNotFoundError as err:
            parser.exit(1, f"ackbus gen --include-path: error: {err}\n")
        print(found)
        parser.exit()


def _add_proto_path(parser: argparse.ArgumentParser) -> None:
    """``-I/--proto-path DIR`` (repeatable), as ``ackbus gen`` and ``ackbus breaking`` take it."""
    _ops.add_proto_path(
        parser, "folder to resolve imports and file names from (repeatable; default: .)"
    )


def _breaking(args: argparse.Namespace) -> int:
    if _codegen_missing("breaking"):
        return 2

    from ackbus_codegen.breaking import allowed, compare, descriptor_set
    from ackbus_codegen.errors import GenerationError
    from google.protobuf import descriptor_pb2

    include = args.include or [Path()]
    try:
        new = descriptor_set(args.files, include)
        if args.against.is_file():
            old = descriptor_pb2.FileDescriptorSet.FromString(args.against.read_bytes())
        else:
            old = descriptor_set(args.files, [args.against, *include])
    except GenerationError as err:
        print(f"ackbus breaking: {err}", file=sys.stderr)
        return 2
    breaks = allowed(compare(old, new, args.files), args.allow)
    for b in breaks:
        print(b)
    if breaks:
        print(f"{len(breaks)} breaking change{'s' if len(breaks) != 1 else ''}", file=sys.stderr)
        return 1
    return 0


def _docs(args: argparse.Namespace) -> int:
    if _codegen_missing("docs"):
        return 2

    from ackbus_codegen.docs import write_docs
    from ackbus_codegen.errors import GenerationError

    try:
        written = write_docs(
            args.files,
            include=args.include or [Path()],
            out=args.out,
            title=args.title,
            version=args.api_version,
        )
    except GenerationError as err:
        print(f"ackbus docs: error: {err}", file=sys.stderr)
        return 1
    print(f"ackbus docs: wrote {' and '.join(str(p) for p in written)}")
    return 0


def _gen(args: argparse.Namespace) -> int:
    if _codegen_missing("gen"):
        return 2

    from ackbus_codegen.errors import GenerationError
    from ackbus_codegen.protoc import generate_to, include_roots, stale

    try:
        include: list[Path] = args.include or include_roots(args.files)
        if not args.include and include != [Path()]:
            roots = " ".join(f"-I {p}" for p in include)
            print(f"ackbus gen: no -I given: using {roots} (where the packages' folders start)")
        if args.check:
            problems = stale(args.files, include=include, out=args.out)
        else:
            written = generate_to(args.files, include=include, out=args.out)
    except GenerationError as err:
        print(f"ackbus gen: error: {err}", file=sys.stderr)
        return 1
    if args.check:
        if problems:
            print(
                f"ackbus gen --check: the generated code in {args.out} is stale; run the same "
                "command without --check and commit the result:",
                file=sys.stderr,
            )
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"ackbus gen --check: the generated code in {args.out} is up to date")
        return 0
    print(f"ackbus gen: wrote {len(written)} files to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
