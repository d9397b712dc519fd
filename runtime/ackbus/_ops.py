"""The operator's commands (docs/operations.md): ``ackbus send``, ``request``,
``status`` and ``tail``, and where commands find message types (``--import``, ``-I``).

:func:`register` adds them to ``ackbus``'s parser, each running as ``_<name>(args)``.

Each imports what it needs inside, so ``ackbus --help`` stays fast. Every failure is one
line on standard error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import wire_pb2
    from ._report import DeliveryReport
    from ._schemas import Schemas

__all__ = ["add_proto_path", "add_schemas", "register", "schemas_of", "seconds"]


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


def _add_connection(parser: argparse.ArgumentParser, timeout: float, what: str) -> None:
    parser.add_argument(
        "--hub", required=True, metavar="ADDRESS", help="the hub, e.g. tcp://127.0.0.1:5555"
    )
    parser.add_argument(
        "--keys",
        metavar="FILE",
        help="this client's NAME.key_secret, for a hub with keys (default: $ACKBUS_KEYS)",
    )
    parser.add_argument(
        "--hub-key",
        metavar="FILE",
        help="the hub's public hub.key, with --keys (default: $ACKBUS_HUB_KEY)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=timeout,
        metavar="S",
        help=f"seconds to wait for {what} (default {timeout:g})",
    )


def seconds(text: str) -> float:
    """A number of seconds above 0, for a ``--timeout`` flag."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``send``, ``request``, ``status`` and ``tail`` to ``ackbus``'s subcommands."""
    for name, text in (
        ("send", "send a command built from JSON, print its delivery report as JSON"),
        ("request", "send a request built from JSON, print the reply as JSON"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=(
                f"{text[0].upper()}{text[1:]}. TYPE is a full message name (poker.StartHand), "
                "found in the modules given with --import or the .proto files under -I; "
                "JSON is its proto3 JSON form. Exit 1 when it fails."
            ),
        )
        p.add_argument("type", metavar="TYPE")
        p.add_argument("json", metavar="JSON", nargs="?", default="{}", help="default: {}")
        add_schemas(p)
        _add_connection(p, 10.0, "the ack" if name == "send" else "the reply")
        p.add_argument("--to", metavar="SERVICE", help="the service that must take it")
        p.add_argument(
            "--service",
            default="ackbus-cli",
            help="the service name this client registers as (default ackbus-cli; with an "
            "access file, one its key may serve)",
        )
        if name == "send":
            p.add_argument(
                "--wait-ack",
                action="store_true",
                help="wait for the receiver's ack and print the settled report (exit 1 "
                "unless acked); without it, return once the message left for the hub",
            )
        else:
            p.add_argument(
                "--reply",
                metavar="TYPE",
                help="the reply's type (default: the one its rpc declares)",
            )
        p.set_defaults(run=_send if name == "send" else _request)

    status = sub.add_parser(
        "status",
        help="a hub's services, instances, in-flight counts, rates and refusals",
        description=(
            "Ask a hub what it knows: each service's instances (software, protocol, key, "
            "messages in flight, acks a second), totals and rates, recent refusals. A table "
            "(rich when the output is a terminal and ackbus[cli] is installed). With keys, "
            "the key must be marked admin = true in the hub's access file."
        ),
    )
    _add_connection(status, 5.0, "the answer")
    fmt = status.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the hub's JSON as it is")
    fmt.add_argument("--plain", action="store_true", help="plain text even on a terminal")
    status.set_defaults(run=_status)

    tail = sub.add_parser(
        "tail",
        help="a live view of the traffic through a hub",
        description=(
            "Print one line per message outcome at the hub: time, id, type, sender -> "
            "receiver, outcome, latency from forward to ack. Until interrupted, or --count "
            "lines, or --duration seconds. With keys, the key must be marked admin = true."
        ),
    )
    _add_connection(tail, 5.0, "the hub's first answer")
    tail.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only these types (shell-style pattern, repeatable)",
    )
    tail.add_argument(
        "--service",
        dest="services",
        action="append",
        default=[],
        metavar="NAME",
        help="only messages from or to this service (repeatable)",
    )
    tail.add_argument("--count", type=int, metavar="N", help="stop after N lines")
    tail.add_argument("--duration", type=seconds, metavar="S", help="stop after S seconds")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(run=_tail)


def _fail(command: str, err: object, code: int = 1) -> int:
    """Say what failed on one line (protobuf's parse errors span two) and return ``code``."""
    print(f"ackbus {command}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return code


def _send(args: argparse.Namespace) -> int:
    import asyncio

    from .errors import AckbusError

    try:
        return asyncio.run(_send_async(args))
    except (AckbusError, OSError) as err:
        return _fail(args.command, err)
    except KeyboardInterrupt:
        return _fail(args.command, "interrupted", 130)


_request = _send


async def _send_async(args: argparse.Namespace) -> int:
    import asyncio

    from ._schemas import Schemas, as_dict
    from .endpoint import Endpoint
    from .errors import DeliveryError, SchemaError
    from .transport import TransportOptions

    logging.getLogger("ackbus.endpoint").addFilter(_Reported())
    schemas = Schemas(args.imports, args.include)
    msg = schemas.from_json(args.type, args.json)
    reply_type = None
    if args.command == "request":
        name = args.reply or schemas.response_of(args.type)
        if name is None:
            raise SchemaError(
                f"no rpc taking {args.type} declares one reply type in the schemas given: "
                "name it with --reply TYPE"
            )
        reply_type = schemas.message_class(name)
    endpoint = Endpoint(
        args.service,
        args.hub,
        keys=args.keys,
        hub_key=args.hub_key,
        connect_timeout=args.timeout,
        # a message written just before close still leaves (without --wait-ack)
        options=TransportOptions(linger_ms=int(args.timeout * 1000)),
    )
    async with endpoint as ep:
        if reply_type is not None:
            try:
                response = await ep.request(msg, reply_type, timeout=args.timeout, to=args.to)
            except DeliveryError as err:
                return _fail(args.command, err)
            print(json.dumps(as_dict(response), indent=2, sort_keys=True))
            return 0
        report = await ep.send(msg, wait_ack=False, timeout=args.timeout, to=args.to)
        if args.wait_ack:
            await report.wait(args.timeout + 1.0)
        else:
            for _ in range(int(args.timeout / 0.005)):  # until it is on the wire
                if ep.stats.transmits or report.done:
                    break
                await asyncio.sleep(0.005)
        print(json.dumps(_report(report), indent=2))
        return 0 if report or (not args.wait_ack and not report.done) else 1


class _Reported(logging.Filter):
    """Drops the endpoint's "delivery failed" warning: the command prints the report."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("delivery failed")


def _report(report: DeliveryReport) -> dict[str, object]:
    out: dict[str, object] = {
        "message_id": report.message_id.hex(),
        "type": report.message_type,
        "status": report.status.value if report.done else "sent",
    }
    if report.done:
        out["attempts"] = report.attempts
    if report.latency is not None:
        out["latency_s"] = round(report.latency, 6)
    if report.acked_by:
        out["acked_by"] = [str(i) for i in report.acked_by]
    if report.error is not None:
        out["error"] = report.error.reason
        out["error_type"] = type(report.error).__name__
    if not report.done:
        out["note"] = "not waiting for the ack (--wait-ack waits)"
    return out


def _status(args: argparse.Namespace) -> int:
    from . import wire_pb2
    from ._admin_client import AdminClient, print_status_json, render_status
    from .errors import AckbusError

    try:
        with AdminClient(
            args.hub, keys=args.keys, hub_key=args.hub_key, timeout=args.timeout
        ) as client:
            reply = client.ask(wire_pb2.AdminRequest(kind=wire_pb2.AdminRequest.STATUS))
        status = json.loads(reply.status_json)
    except (AckbusError, ValueError) as err:
        return _fail("status", err)
    except KeyboardInterrupt:
        return _fail("status", "interrupted", 130)
    if args.json:
        print_status_json(status)
    else:
        render_status(status, sys.stdout, rich=False if args.plain else None)
    return 0


def _tail(args: argparse.Namespace) -> int:
    import time

    from ._admin_client import AdminClient, traffic_line
    from .errors import AckbusError

    printed = 0
    until = time.monotonic() + args.duration if args.duration else None
    try:
        with AdminClient(
            args.hub, keys=args.keys, hub_key=args.hub_key, timeout=args.timeout
        ) as client:
            replies = client.tail(args.types, args.services)
            next(replies)
            print(f"tailing {args.hub} (Ctrl-C stops)", file=sys.stderr, flush=True)
            for reply in _until(replies, until):
                if reply.dropped:
                    print(f"... {reply.dropped} records dropped", file=sys.stderr)
                for rec in reply.traffic:
                    if args.json:
                        print(json.dumps(_traffic(rec)), flush=True)
                    else:
                        print(traffic_line(rec), flush=True)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        replies.close()
                        return 0
            replies.close()
    except AckbusError as err:
        return _fail("tail", err)
    except KeyboardInterrupt:
        return 0
    return 0


def _until(
    replies: Generator[wire_pb2.AdminReply], until: float | None
) -> Iterator[wire_pb2.AdminReply]:
    """The replies until the monotonic time ``until`` (None: for ever)."""
    import time

    for reply in replies:
        yield reply
        if until is not None and time.monotonic() >= until:
            return


def _traffic(rec: wire_pb2.Traffic) -> dict[str, object]:
    return {
        "at": rec.at,
        "message_id": rec.message_id.hex(),
        "type": rec.type,
        "sender": rec.sender,
        "receiver": rec.receiver,
        "outcome": rec.outcome,
        "latency_s": rec.latency_s,
        "attempt": rec.attempt,
        "detail": rec.detail,
    }
