"""Events in generated code: who subscribes, and the publishers' own entry point.

A service with an rpc that takes an event type subscribes to it (:func:`event_subscribers`,
across every file protoc passed). Each file that declares event types gets one publisher
class pair, ``<File>Events`` and ``<File>BlockingEvents`` (``poker/table.proto`` ->
``TableEvents``), with a ``publish_<event>`` method per event type, independent of any
subscriber's client. Its policy is the event message's own (``<EVENT>_EVENT_POLICY``:
the message's options, the runtime's defaults for the rest), naming the declared
subscribers, each with its own limits (``ackbus.SubscriberPolicy``) where its rpc policy's
attempts or deadline differ from the event's.
"""

from __future__ import annotations

import json
import re

from ackbus import options_pb2

from . import policy as pol
from .model import (
    _LINE_LENGTH,
    POLICY_ANNOTATION,
    Method,
    MethodDocs,
    Param,
    PolicyConst,
    Service,
    ServiceDocs,
    _args_section,
    _Builder,
    _fill,
    _join,
    _policy_args,
    _Skip,
    docstring,
)
from .naming import Namespace, is_reserved, snake_case
from .protos import TypeIndex, TypeInfo

__all__ = ["Subscribers", "event_policy_name", "event_subscribers", "publisher", "subscriber_args"]

Subscribers = dict[str, dict[str, pol.PolicyOptions]]
"""Event type -> its declared subscriber services (full names, sorted) -> each one's rpc
policy (method, message and service options merged)."""

# What of a subscriber's rpc policy governs its own delivery: one transmit of an event
# reaches every subscriber, so the re-send timing and the priority stay the event's.
_PER_SUBSCRIBER = ("max_attempts", "deadline")


def event_subscribers(index: TypeIndex) -> Subscribers:
    """Event type → the schema services with an rpc that takes it as an EVENT, across
    every file protoc passed (who a publisher waits for), with each one's rpc policy."""
    found: Subscribers = {}
    for pf in index.files.values():
        pkg = f"{pf.proto.package}." if pf.proto.package else ""
        for svc in pf.proto.service:
            svc_opts = pol.PolicyOptions()
            if svc.options.HasExtension(options_pb2.service_policy):
                svc_opts = pol.from_proto(svc.options.Extensions[options_pb2.service_policy])
            for rpc in svc.method:
                req = index.get(rpc.input_type)
                if rpc.client_streaming or rpc.server_streaming or req is None:
                    continue
                levels = [pol.PolicyOptions()]
                if rpc.options.HasExtension(options_pb2.method_policy):
                    levels = [pol.from_proto(rpc.options.Extensions[options_pb2.method_policy])]
                if req.message is not None and req.message.options.HasExtension(
                    options_pb2.message_policy
                ):
                    msg = req.message.options.Extensions[options_pb2.message_policy]
                    levels.append(pol.from_proto(msg))
                merged = pol.merge([*levels, svc_opts])
                if merged.is_event:
                    found.setdefault(req.full_name, {})[pkg + svc.name] = merged
    return {event: dict(sorted(services.items())) for event, services in found.items()}


def event_policy_name(attr_path: str) -> str:
    """``HandStarted`` -> ``HAND_STARTED_EVENT_POLICY`` (a nested ``Deal.Card`` ->
    ``DEAL_CARD_EVENT_POLICY``): the module constant of an event type's own policy."""
    return f"{_snake(attr_path).upper()}_EVENT_POLICY"


def subscriber_args(
    event: pol.PolicyOptions, subscribers: dict[str, pol.PolicyOptions]
) -> tuple[list[str], list[str]]:
    """The ``subscribers=`` argument of an event's policy, and the entries of its
    ``subscriber_policies=``: one per subscriber whose own attempts or deadline differ
    from the event's."""
    if not subscribers:
        return [], []
    names = ", ".join(json.dumps(name) for name in subscribers)
    args = [f"subscribers=({names}{',' if len(subscribers) == 1 else ''})"]
    full_event = pol.merge([event, pol.RUNTIME_DEFAULTS])
    entries = []
    for name, own in subscribers.items():
        full = pol.merge([own, pol.RUNTIME_DEFAULTS])
        differ = [
            f"{f}={getattr(full, f)!r}"
            for f in _PER_SUBSCRIBER
            if getattr(full, f) != getattr(full_event, f)
        ]
        if differ:
            entries.append(f"ackbus.SubscriberPolicy({json.dumps(name)}, {', '.join(differ)})")
    return args, entries


def publisher(b: _Builder) -> Service | None:
    """The publisher classes of the event types ``b``'s file declares, or ``None``."""
    pf = b.pf
    events: list[tuple[TypeInfo, pol.PolicyOptions]] = []
    for info in b.index.messages_of(pf.name):
        if info.is_map_entry:
            continue
        own = b.message_options(info)
        if not own.is_event and info.full_name not in b.subscribers:
            continue
        if info.reserved:
            b.warnings.append(
                f"{pf.where(info.path)}: event {info.full_name} has no publish method: its "
                "name is a Python keyword"
            )
            continue
        events.append((info, own))
    if not events:
        return None
    stem = _camel(pf.name.rpartition("/")[2].removesuffix(".proto"))
    if not stem or is_reserved(f"{stem}Events"):
        b.warnings.append(f"{pf.name}: no publisher class: its file name gives no Python name")
        return None
    owner = f"the events of {pf.name}"
    cls = b.names.claim(f"{stem}Events", owner)
    blocking = b.names.claim(f"{stem}BlockingEvents", owner)
    calls = b.names.claim(f"_{stem}Publishes", owner)
    attrs = Namespace(f"the methods of {cls}")
    methods: list[Method] = []
    consts: list[str] = []
    for info, own in events:
        saved = b._save()
        where = pf.where(info.path)
        try:
            params = b.params(info, f"event {info.full_name}")
            request_type = b.type_expr(info)
        except _Skip as why:
            b._restore(saved)
            b.warnings.append(f"{where}: event {info.full_name} has no publish method: {why}")
            continue
        what = f"event {info.full_name} ({where})"
        snake = _snake(info.attr_path)
        send = attrs.claim(f"publish_{snake}", what)
        const = b.names.claim(event_policy_name(info.attr_path), what)
        subs = b.subscribers.get(info.full_name, {})
        _policy_const(b, const, info.full_name, pol.merge([own, _EVENT]), subs)
        b.event_policies[info.full_name] = const
        consts.append(const)
        doc = pf.at(info.path).comment
        methods.append(
            Method(
                name=info.attr_path,
                full_name=info.full_name,
                doc=doc,
                event=True,
                request_type=request_type,
                request_full_name=info.full_name,
                response_type=None,
                params=params,
                send=send,
                request=None,
                handler="",
                policy=const,
                docs=_docs(info.full_name, doc, params, const, tuple(subs)),
            )
        )
    if not methods:
        return None
    about = _fill(
        "A publish is done once every subscriber service the schemas declare acked it, "
        "each within its own rpc policy's attempts and deadline."
    )
    docs = ServiceDocs(
        client=docstring(
            _join(
                f"Async publisher of the events of {pf.name}: ``await`` what its methods return.",
                about,
            )
        ),
        blocking_client=docstring(
            _fill(
                f"Blocking publisher of the events of {pf.name}, for plain threads: the "
                f"methods of {cls}, each returning when done."
            )
        ),
        handler="",
        sync_handler="",
    )
    return Service(
        pf.name,
        cls,
        blocking,
        "",
        "",
        "",
        tuple(methods),
        docs,
        calls=calls,
        publisher=True,
        what=pf.name,
    )


_EVENT = pol.PolicyOptions(kind="EVENT")


def _policy_const(
    b: _Builder,
    name: str,
    full: str,
    merged: pol.PolicyOptions,
    subscribers: dict[str, pol.PolicyOptions],
) -> None:
    """Declare ``name`` (claimed) holding event ``full``'s own policy."""
    names, entries = subscriber_args(merged, subscribers)
    args = _policy_args(merged) + names
    if entries:
        args.append(f"subscriber_policies=({', '.join(entries)},)")
    expr = f"ackbus.Policy({', '.join(args)})"
    if len(f"{name}: {POLICY_ANNOTATION} = {expr}") > _LINE_LENGTH:
        # one argument (and one subscriber entry) per line, as a formatter would
        lines = [f"    {arg},\n" for arg in args[: len(args) - bool(entries)]]
        if entries:
            inner = "".join(f"        {e},\n" for e in entries)
            lines.append(f"    subscriber_policies=(\n{inner}    ),\n")
        expr = f"ackbus.Policy(\n{''.join(lines)})"
    doc = _fill(
        f"event {full}: its message options, and each declared subscriber's own limits "
        "where its rpc policy differs."
    )
    b.model.policies.append(PolicyConst(name, expr, docstring(doc)))


def _docs(
    full: str, doc: str, params: tuple[Param, ...], const: str, subscribers: tuple[str, ...]
) -> MethodDocs:
    summary = doc or f"The event {full}."
    who = (
        f"Done once {', '.join(subscribers)} each acked it."
        if subscribers
        else "No schema service subscribes to it: done once the services it reaches ack."
    )
    publishes = _fill(
        f"Publishes ``msg``, or a {full} built from the fields (None leaves one unset), "
        f"under {const}. {who}"
    )
    return MethodDocs(
        send=docstring(_join(summary, publishes, _args_section(params))),
        request="",
        handler="",
    )


def _snake(attr_path: str) -> str:
    return "_".join(snake_case(part) for part in attr_path.split("."))


def _camel(stem: str) -> str:
    """``table`` -> ``Table``, ``hand_events`` -> ``HandEvents``."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", stem))
