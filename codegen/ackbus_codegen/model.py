"""The typed model of one generated ``_ackbus.py`` module.

:func:`build_file` turns one .proto file (with the :class:`TypeIndex` of everything it
imports) into a :class:`FileModel`: every Python name, type annotation, default, import,
docstring and policy the module will contain is decided here, in code that is unit
tested, so the templates only loop and print. Whatever this model cannot map faithfully
is either skipped with a warning (streaming rpcs, names Python cannot spell) or refused
with a :class:`GenerationError` that names the file, the line and both sides of the
conflict (name collisions, bad policy values). It never produces code that would fail
to import or to type-check.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field

from ackbus import options_pb2
from google.protobuf import descriptor_pb2 as d

from . import policy as pol
from .errors import GenerationError
from .naming import (
    Namespace,
    importable,
    output_for_proto,
    param_name,
    policy_name,
    qualified_alias,
    snake_case,
)
from .protos import FDP, ProtoFile, TypeIndex, TypeInfo, scalar_type

__all__ = [
    "FileModel",
    "Import",
    "MessageEntry",
    "Method",
    "Param",
    "PolicyConst",
    "Service",
    "build_file",
    "docstring",
]

EMPTY = "google.protobuf.Empty"

# Keyword arguments every send method takes besides the fields (ackbus.CommandOptions,
# PublishOptions, CallOptions), and the name they come in as.
SEND_OPTIONS = ("wait_ack", "timeout", "to", "priority", "headers", "policy", "key", "options")
# The type variable of what a send returns (an awaitable report, or the report).
REPORT_VAR = "_R"
# Names the module header binds.
_HEADER_NAMES = (
    "ackbus",
    "Awaitable",
    "Final",
    "Iterable",
    "Mapping",
    "REGISTRY",
    "TypeVar",
    "Unpack",
    REPORT_VAR,
)
# How a policy constant is declared: ``Final`` because the clients read the module
# global at each call, so rebinding it would change every client's default silently.
POLICY_ANNOTATION = "Final[ackbus.Policy]"
_LINE_LENGTH = 100


@dataclass(frozen=True, slots=True)
class Param:
    """One field of a request message as a keyword argument."""

    name: str
    """The Python keyword argument (``from_`` for field ``from``)."""
    field: str
    """The proto field name, as the message constructor takes it."""
    annotation: str
    """The value's type; the argument is ``annotation | None``, None leaving it unset."""
    doc: str


@dataclass(frozen=True, slots=True)
class MethodDocs:
    """Docstring literals of the methods one rpc becomes."""

    send: str
    request: str
    handler: str


@dataclass(frozen=True, slots=True)
class ServiceDocs:
    client: str
    blocking_client: str
    handler: str
    sync_handler: str


@dataclass(frozen=True, slots=True)
class Method:
    """One rpc, as client methods and a handler method."""

    name: str
    full_name: str
    doc: str
    """Docstring body (unquoted), shared by the client and handler methods."""
    event: bool
    request_type: str
    request_full_name: str
    response_type: str | None
    params: tuple[Param, ...]
    send: str
    request: str | None
    handler: str
    policy: str
    """Name of the public module-level ``ackbus.Policy`` constant (:func:`policy_name`)."""
    docs: MethodDocs

    @property
    def rpc(self) -> str:
        """The rpc as messages name it: "poker.Table/StartHand"."""
        service, _, name = self.full_name.rpartition(".")
        return f"{service}/{name}"

    def fields(self, indent: int) -> str:
        """The ``fields = {...}`` statement of a client method's body: one line when it
        fits, else an entry per line."""
        entries = [f'"{p.field}": {p.name}' for p in self.params]
        line = f"fields = {{{', '.join(entries)}}}"
        if indent + len(line) <= _LINE_LENGTH:
            return line
        pad = " " * (indent + 4)
        return "fields = {\n" + "".join(f"{pad}{e},\n" for e in entries) + " " * indent + "}"

    def call(self, indent: int, head: str, *args: str, lead: int = 0) -> str:
        """``head(args...)`` on one line when it fits after ``indent + lead`` columns
        (and a trailing comma), else an argument per line."""
        return _call(indent, head, args, lead + 1)


@dataclass(frozen=True, slots=True)
class Service:
    full_name: str
    client: str
    blocking_client: str
    handler: str
    sync_handler: str
    """The handler base whose ``on_*`` methods are plain ``def`` (run in worker threads)."""
    doc: str
    methods: tuple[Method, ...]
    docs: ServiceDocs
    calls: str = ""
    """The private class both clients derive from: each command (or event) once."""
    publisher: bool = False
    """The publisher classes of a file's events, not a service's clients."""
    what: str = ""
    """What the clients send to, for the shared class's docstring."""

    @property
    def has_client(self) -> bool:
        """Whether it has a client: an rpc that is a command (events are published
        through the publisher classes of the file that declares them)."""
        return any(not m.event for m in self.methods)


@dataclass(frozen=True, slots=True)
class PolicyConst:
    """One rpc's merged schema policy as a public, documented module constant."""

    name: str
    expr: str
    doc: str
    """Docstring literal printed under the constant."""
    annotation: str = POLICY_ANNOTATION


@dataclass(frozen=True, slots=True)
class MessageEntry:
    """One ``ackbus.MessageSpec`` of the module's registry."""

    full_name: str
    cls: str
    policy: str
    legacy_name: str | None
    """A Python string literal, or ``None``."""

    def call(self, indent: int, *args: str) -> str:
        """``ackbus.MessageSpec(args...)``, formatted as :meth:`Method.call` does."""
        return _call(indent, "ackbus.MessageSpec", args, 1)


@dataclass(frozen=True, slots=True)
class Import:
    statement: str


@dataclass(slots=True)
class FileModel:
    proto: str
    output: str
    doc: str
    generator_version: str
    runtime_series: tuple[str, str]
    """Major and minor version the runtime must have."""
    module_doc: str = ""
    imports: list[Import] = field(default_factory=list)
    typing_imports: list[str] = field(default_factory=list)
    abc_imports: list[str] = field(default_factory=list)
    report_var: str = REPORT_VAR
    policies: list[PolicyConst] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    publisher: Service | None = None
    """The publisher classes of the event types the file declares (``<File>Events``)."""
    messages: list[MessageEntry] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.services and not self.messages

    @property
    def has_clients(self) -> bool:
        return self.publisher is not None or any(s.has_client for s in self.services)


class _Skip(Exception):
    """An element the generator does not map; the text says why."""


def docstring(text: str) -> str:
    """``text`` as a triple-quoted Python literal that any text survives."""
    body = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    if "\n" in body:
        return f'"""{body}\n"""'
    return f'"""{body}"""'


class _Builder:
    def __init__(
        self,
        pf: ProtoFile,
        index: TypeIndex,
        version: str,
        warnings: list[str],
        subscribers: dict[str, dict[str, pol.PolicyOptions]] | None = None,
    ):
        self.pf = pf
        self.index = index
        self.subscribers = subscribers if subscribers is not None else {}
        """Event type → its subscriber services (see :func:`.events.event_subscribers`)."""
        self.event_policies: dict[str, str] = {}
        """Event type declared here → its policy constant (see :func:`.events.publisher`)."""
        self.warnings = warnings
        major, minor = [*version.split("."), "0"][:2]
        self.model = FileModel(
            proto=pf.name,
            output=output_for_proto(pf.name),
            doc=pf.doc,
            generator_version=version,
            runtime_series=(major, minor),
        )
        self.names = Namespace(
            f"module {self.model.output}",
            {n: f"the generated module's own {n!r}" for n in _HEADER_NAMES},
        )
        self.aliases: dict[str, str] = {}
        self.abc: set[str] = set()

    # -- imports --------------------------------------------------------------

    def alias(self, module: str) -> str:
        known = self.aliases.get(module)
        if known is not None:
            return known
        if not importable(module):
            raise _Skip(f"module {module} cannot be spelled in an import statement")
        short = module.rpartition(".")[2]
        name = short if short not in self.names else qualified_alias(module)
        self.aliases[module] = self.names.claim(name, f"the import of {module}")
        return name

    def type_expr(self, info: TypeInfo) -> str:
        if info.reserved:
            raise _Skip(f"type {info.full_name} has a Python keyword in its name")
        return f"{self.alias(info.file.module)}.{info.attr_path}"

    def _save(self) -> tuple[dict[str, str], dict[str, str], set[str]]:
        return dict(self.aliases), self.names.snapshot(), set(self.abc)

    def _restore(self, saved: tuple[dict[str, str], dict[str, str], set[str]]) -> None:
        """Forget the imports and names a skipped element had asked for."""
        aliases, names, abc = saved
        self.aliases, self.abc = dict(aliases), set(abc)
        self.names.restore(names)

    # -- policies -------------------------------------------------------------

    def level(self, options: pol.PolicyOptions, where: str, what: str) -> pol.PolicyOptions:
        problems = pol.problems(options)
        if problems:
            raise GenerationError(f"{where}: {what}: invalid policy: {'; '.join(problems)}")
        return options

    def message_options(self, info: TypeInfo) -> pol.PolicyOptions:
        assert info.message is not None
        opts = info.message.options
        if not opts.HasExtension(options_pb2.message_policy):
            return pol.PolicyOptions()
        found = pol.from_proto(opts.Extensions[options_pb2.message_policy])
        where = info.file.where((*info.path, 7, options_pb2.message_policy.number), info.path)
        found = self.level(found, where, f"message {info.full_name}")
        self.check_key(info, found, where, f"message {info.full_name}")
        return found

    def check_key(self, info: TypeInfo, policy: pol.PolicyOptions, where: str, what: str) -> None:
        """An ``ordering_key`` must name a singular scalar field of ``info``'s message
        (through singular message fields, for a dotted path): its value is the key."""
        path = policy.ordering_key
        if not path:
            return
        msg = info.message
        assert msg is not None
        parts = path.split(".")
        for i, part in enumerate(parts):
            found = next((f for f in msg.field if f.name == part), None)
            if found is None:
                raise GenerationError(
                    f"{where}: {what}: ordering_key {path!r}: {msg.name} has no field {part!r}"
                )
            repeated = found.label == d.FieldDescriptorProto.LABEL_REPEATED
            is_message = found.type == d.FieldDescriptorProto.TYPE_MESSAGE
            last = i == len(parts) - 1
            if repeated or (last and is_message) or (not last and not is_message):
                need = "a singular scalar field" if last else "a singular message field"
                raise GenerationError(
                    f"{where}: {what}: ordering_key {path!r}: {msg.name}.{part} is not {need}"
                )
            if not last:
                nested = self.index[found.type_name].message
                assert nested is not None
                msg = nested

    def policy_const(
        self,
        name: str,
        rpc_full: str,
        merged: pol.PolicyOptions,
    ) -> None:
        """Declare the constant ``name`` (already claimed) holding rpc ``rpc_full``'s policy."""
        expr = _policy_expr(merged)
        if len(f"{name}: {POLICY_ANNOTATION} = {expr}") > _LINE_LENGTH:
            # one argument per line, as a formatter would
            args = "".join(f"    {arg},\n" for arg in _policy_args(merged))
            expr = f"ackbus.Policy(\n{args})"
        service, _, rpc = rpc_full.rpartition(".")
        doc = f"rpc {service}/{rpc}: its method, message and service options merged."
        self.model.policies.append(PolicyConst(name, expr, docstring(doc)))

    # -- messages -------------------------------------------------------------

    def registry(self, type_names: Namespace) -> None:
        for info in self.index.messages_of(self.pf.name):
            if info.is_map_entry:
                continue
            where = self.pf.where(info.path)
            if info.reserved:
                self.warnings.append(
                    f"{where}: message {info.full_name} left out of the registry: "
                    "its name is a Python keyword"
                )
                continue
            assert info.message is not None
            opts = info.message.options
            legacy = opts.Extensions[options_pb2.legacy_name] or None
            type_names.claim(info.full_name, f"message {info.full_name} ({where})")
            if legacy is not None:
                type_names.claim(legacy, f"the legacy_name of {info.full_name} ({where})")
            policy = self.event_policies.get(info.full_name)
            if policy is None:
                policy = _policy_expr(self.message_options(info))
            self.model.messages.append(
                MessageEntry(
                    full_name=info.full_name,
                    cls=self.type_expr(info),
                    policy=policy,
                    legacy_name=None if legacy is None else json.dumps(legacy),
                )
            )

    # -- services -------------------------------------------------------------

    def service(self, index: int, svc: d.ServiceDescriptorProto) -> Service | None:
        pkg = f"{self.pf.proto.package}." if self.pf.proto.package else ""
        full = pkg + svc.name
        path = (6, index)
        where = self.pf.where(path)
        svc_opts = pol.PolicyOptions()
        if svc.options.HasExtension(options_pb2.service_policy):
            found = pol.from_proto(svc.options.Extensions[options_pb2.service_policy])
            at = self.pf.where((*path, 3, options_pb2.service_policy.number), path)
            svc_opts = self.level(found, at, f"service {full}")
        owner = f"service {full} ({where})"
        client = self.names.claim(f"{svc.name}Client", owner)
        blocking = self.names.claim(f"{svc.name}BlockingClient", owner)
        calls = self.names.claim(f"_{svc.name}Commands", owner)
        handler = self.names.claim(f"{svc.name}Handler", owner)
        sync_handler = self.names.claim(f"{svc.name}SyncHandler", owner)
        methods: list[Method] = []
        attrs = Namespace(
            f"the methods of service {full}", {"implemented_methods": "ackbus.Handler"}
        )
        by_request: dict[str, str] = {}
        for i, rpc in enumerate(svc.method):
            mpath = (*path, 2, i)
            mwhere = self.pf.where(mpath)
            rpc_full = f"{full}.{rpc.name}"
            saved = self._save()
            try:
                method = self.method(rpc, rpc_full, mpath, svc_opts, attrs)
            except _Skip as why:
                self._restore(saved)
                self.warnings.append(f"{mwhere}: rpc {rpc_full} skipped: {why}")
                continue
            # Commands are addressed by rpc, so several may share a request type; an
            # event is delivered to a subscriber by its type, so one rpc takes it.
            other = by_request.get(method.request_full_name) if method.event else None
            if other is not None:
                raise GenerationError(
                    f"{mwhere}: rpc {rpc_full} and rpc {other} both subscribe to event "
                    f"{method.request_full_name}; a service receives an event once, so one "
                    "rpc handles it: keep one, or split them into two services"
                )
            if method.event:
                by_request[method.request_full_name] = rpc_full
            methods.append(method)
        if not methods:
            self.warnings.append(f"{where}: service {full} skipped: it has no rpc ackbus maps")
            return None
        doc = self.pf.at(path).comment
        docs = ServiceDocs(
            client=docstring(
                _join(f"Async client of service {full}: ``await`` what its methods return.", doc)
            ),
            blocking_client=docstring(
                _fill(
                    f"Blocking client of service {full}, for plain threads: the methods of "
                    f"{client}, each returning when done."
                )
            ),
            handler=docstring(
                _join(
                    f"Handlers of service {full}: override the ``on_*`` methods you serve.",
                    doc,
                )
            ),
            sync_handler=docstring(
                _fill(
                    f"{handler} with plain ``def`` methods: they run in the endpoint's worker "
                    "threads (``Endpoint(workers=...)``), so code that blocks does not "
                    "stall its loop."
                )
            ),
        )
        return Service(
            full,
            client,
            blocking,
            handler,
            sync_handler,
            doc,
            tuple(methods),
            docs,
            calls=calls,
            what=f"service {full}",
        )

    def method(
        self,
        rpc: d.MethodDescriptorProto,
        full: str,
        path: tuple[int, ...],
        svc_opts: pol.PolicyOptions,
        attrs: Namespace,
    ) -> Method:
        if rpc.client_streaming or rpc.server_streaming:
            raise _Skip("streaming rpcs are not mapped")
        where = self.pf.where(path)
        req = self.index[rpc.input_type]
        resp = self.index[rpc.output_type]
        request_type = self.type_expr(req)
        response_type = None if resp.full_name == EMPTY else self.type_expr(resp)
        method_opts = pol.PolicyOptions()
        if rpc.options.HasExtension(options_pb2.method_policy):
            found = pol.from_proto(rpc.options.Extensions[options_pb2.method_policy])
            at = self.pf.where((*path, 4, options_pb2.method_policy.number), path)
            method_opts = self.level(found, at, f"rpc {full}")
        merged = self.level(
            pol.merge([method_opts, self.message_options(req), svc_opts]),
            where,
            f"rpc {full} (method, message and service policy merged)",
        )
        self.check_key(req, merged, where, f"rpc {full}")
        if merged.is_event and response_type is not None:
            raise GenerationError(
                f"{where}: rpc {full} is an EVENT but returns {resp.full_name}; events "
                "have no reply: return google.protobuf.Empty or make it a COMMAND"
            )
        params = self.params(req, full)
        snake = snake_case(rpc.name)
        verb = "publish" if merged.is_event else "send"
        owner = f"rpc {full} ({where})"
        send = attrs.claim(f"{verb}_{snake}", owner)
        request = None
        if response_type is not None:
            request = attrs.claim(f"request_{snake}", owner)
        handler = attrs.claim(f"on_{snake}", owner)
        service_name = full.rpartition(".")[0].rpartition(".")[2]
        const = self.names.claim(policy_name(service_name, rpc.name), owner)
        self.policy_const(const, full, merged)
        doc = self.pf.at(path).comment
        return Method(
            name=rpc.name,
            full_name=full,
            doc=doc,
            event=merged.is_event,
            request_type=request_type,
            request_full_name=req.full_name,
            response_type=response_type,
            params=params,
            send=send,
            request=request,
            handler=handler,
            policy=const,
            docs=_method_docs(full, doc, req.full_name, response_type, resp, params, const),
        )

    def params(self, req: TypeInfo, rpc_full: str) -> tuple[Param, ...]:
        assert req.message is not None
        module_alias = self.alias(req.file.module)
        # The method's body names these: a field named like one must not shadow it.
        taken = frozenset({"self", "msg", "fields", "ackbus", *SEND_OPTIONS, module_alias})
        scope = Namespace(
            f"the keyword arguments of rpc {rpc_full}",
            {n: f"the {n!r} argument" for n in taken},
        )
        out = []
        for i, f in enumerate(req.message.field):
            fpath = (*req.path, 2, i)
            name = param_name(f.name, taken)
            scope.claim(name, f"field {req.full_name}.{f.name} ({req.file.where(fpath)})")
            out.append(self.param(req.file, f, name, req.file.at(fpath).comment))
        return tuple(out)

    def param(self, pf: ProtoFile, f: d.FieldDescriptorProto, name: str, doc: str) -> Param:
        """The argument of field ``f``: its value's type (a mapping or an iterable for a
        map or repeated field); every argument defaults to None, which leaves the field
        unset (``ackbus.build`` refuses a proto2 ``required`` one left so)."""
        if f.label == FDP.LABEL_REPEATED:
            entry = self.index[f.type_name] if f.type_name else None
            if entry is not None and entry.is_map_entry:
                assert entry.message is not None
                key, value = entry.message.field[0], entry.message.field[1]
                self.abc.add("Mapping")
                return Param(
                    name, f.name, f"Mapping[{self.value_type(key)}, {self.value_type(value)}]", doc
                )
            self.abc.add("Iterable")
            return Param(name, f.name, f"Iterable[{self.value_type(f)}]", doc)
        return Param(name, f.name, self.value_type(f), doc)

    def value_type(self, f: d.FieldDescriptorProto) -> str:
        scalar = scalar_type(f)
        if scalar is not None:
            return scalar[0]
        info = self.index[f.type_name]
        if info.enum is not None:
            return f"{self.type_expr(info)}.ValueType"
        return self.type_expr(info)


def _call(indent: int, head: str, args: tuple[str, ...], lead: int) -> str:
    line = f"{head}({', '.join(args)})"
    if indent + lead + len(line) <= _LINE_LENGTH:
        return line
    pad = " " * (indent + 4)
    return f"{head}(\n" + "".join(f"{pad}{a},\n" for a in args) + " " * indent + ")"


def _join(*paragraphs: str) -> str:
    return "\n\n".join(p for p in paragraphs if p)


def _fill(text: str) -> str:
    """A sentence the generator wrote, wrapped to fit a docstring."""
    return textwrap.fill(text, width=80, break_on_hyphens=False)


def _args_section(params: tuple[Param, ...]) -> str:
    lines = []
    for p in params:
        if p.doc:
            first = " ".join(p.doc.split("\n\n")[0].split())
            lines.append(f"    {p.name}: {first}")
    return "Args:\n" + "\n".join(lines) if lines else ""


def _method_docs(
    full: str,
    doc: str,
    request: str,
    response_type: str | None,
    resp: TypeInfo,
    params: tuple[Param, ...],
    policy: str,
) -> MethodDocs:
    summary = doc or f"The rpc {full}."
    service, _, name = full.rpartition(".")
    rpc = f"{service}/{name}"
    args = _args_section(params)
    sends = (
        f"Sends ``msg``, or a {request} built from the fields (None leaves one unset), "
        f"to rpc {rpc} under {policy}"
    )
    reply = f"returns the {resp.full_name} reply"
    request_doc = _join(summary, _fill(f"{sends}, and {reply}."), args)
    return MethodDocs(
        send=docstring(_join(summary, _fill(sends + "."), args)),
        request=docstring(request_doc) if response_type else "",
        handler=docstring(
            _join(
                summary,
                _fill(
                    f"Runs for each message sent to rpc {rpc}"
                    + (f"; {reply}." if response_type else ".")
                ),
            )
        ),
    )


def _policy_args(policy: pol.PolicyOptions) -> list[str]:
    return [f"{k}=ackbus.Kind.{v}" if k == "kind" else f"{k}={v!r}" for k, v in policy.items()]


def _policy_expr(policy: pol.PolicyOptions) -> str:
    return f"ackbus.Policy({', '.join(_policy_args(policy))})"


def build_file(
    pf: ProtoFile,
    index: TypeIndex,
    *,
    version: str,
    warnings: list[str],
    type_names: Namespace,
    subscribers: dict[str, dict[str, pol.PolicyOptions]] | None = None,
) -> FileModel:
    """The model of ``pf``'s ``_ackbus.py``; ``type_names`` spans all files generated
    together, so two files cannot register one type name; ``subscribers`` (from
    :func:`.events.event_subscribers`) says which services each event type's publishers
    wait for, and with which rpc policies."""
    from .events import publisher  # it builds on this module

    b = _Builder(pf, index, version, warnings, subscribers)
    if not importable(pf.module):
        warnings.append(
            f"{pf.name}: file skipped: its module {pf.module} cannot be spelled in an "
            "import statement"
        )
        return b.model
    services = []
    for i, proto in enumerate(pf.proto.service):
        built = b.service(i, proto)
        if built is not None:
            services.append(built)
    b.model.services = services
    b.model.publisher = publisher(b)
    b.registry(type_names)
    m = b.model
    for svc in services:
        if svc.has_client:
            m.exports += [svc.client, svc.blocking_client]
        m.exports += [svc.handler, svc.sync_handler]
    if m.publisher is not None:
        m.exports += [m.publisher.client, m.publisher.blocking_client]
    m.exports += [p.name for p in m.policies]
    m.exports.append("REGISTRY")
    m.exports.sort()
    m.imports = [_import(module, alias) for module, alias in sorted(b.aliases.items())]
    policies = (
        _fill(
            "Each ``*_POLICY`` constant is the schema policy of an rpc (or an event), the "
            "runtime's defaults filling what its options leave out. A call's ``policy=`` "
            "replaces it whole; to change one field, start from it: "
            "``policy=X_POLICY.with_(max_attempts=1)``."
        )
        if m.policies
        else ""
    )
    m.module_doc = docstring(
        _join(
            f"Typed ackbus clients, handler bases and registry for {pf.name}.",
            pf.doc,
            policies,
            _fill(
                f"Generated by ackbus_codegen {version}: do not edit; change the .proto "
                "file and regenerate."
            ),
        )
    )
    typing = {"Final"} if m.policies else set()
    if m.has_clients:
        b.abc.add("Awaitable")
        typing |= {"TypeVar", "Unpack"}
    m.abc_imports = sorted(b.abc)
    m.typing_imports = sorted(typing)
    return m


def _import(module: str, alias: str) -> Import:
    package, _, name = module.rpartition(".")
    suffix = "" if alias == name else f" as {alias}"
    if package:
        return Import(f"from {package} import {name}{suffix}")
    return Import(f"import {name}{suffix}")
