"""Running protoc (from grpcio-tools) with the stock Python, mypy-protobuf and ackbus plugins."""

from __future__ import annotations

import contextlib
import filecmp
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

# Registers the ackbus options before a descriptor set is parsed, so that they parse as
# extensions (see plugin.py).
import ackbus.options_pb2  # noqa: F401
from google.protobuf import descriptor_pb2 as d

from .errors import GenerationError


def _grpc_tools_include() -> Path:
    import grpc_tools

    return Path(grpc_tools.__file__).parent / "_proto"


def ackbus_include(dest: Path) -> Path:
    """Copy the ``.proto`` files the ackbus runtime ships into ``dest/ackbus/`` and return
    ``dest``: an include folder where ``import "ackbus/options.proto";`` resolves, whether
    ackbus is installed from a wheel or editable."""
    folder = dest / "ackbus"
    folder.mkdir(parents=True, exist_ok=True)
    for entry in resources.files("ackbus").iterdir():
        if entry.name.endswith(".proto"):
            (folder / entry.name).write_bytes(entry.read_bytes())
    return dest


@contextlib.contextmanager
def _fresh(files: Sequence[str], include: Sequence[Path]) -> Iterator[list[tuple[str, Path]]]:
    """Generate ``files`` into a temporary folder (ackbus's own protos on the include
    path after the caller's folders); yield each file's name below it and its path,
    sorted. Raises :class:`GenerationError` when protoc or a plugin fails."""
    with tempfile.TemporaryDirectory(prefix="ackbus-gen-") as tmp:
        fresh = Path(tmp, "out")
        extra = ackbus_include(Path(tmp, "include"))
        run(files, include=[*include, extra], out=fresh, ackbus=True)
        yield [
            (p.relative_to(fresh).as_posix(), p)
            for p in sorted(p for p in fresh.rglob("*") if p.is_file())
        ]


def generate_to(files: Sequence[str], *, include: Sequence[Path], out: Path) -> list[Path]:
    """``ackbus gen``: compile any project's schemas into ``out``, all or nothing.

    Output is written to a temporary folder first and copied into ``out`` only when
    protoc and every plugin succeeded, so a failure leaves ``out`` untouched. Returns
    the files written.
    """
    written = []
    with _fresh(files, include) as generated:
        for name, src in generated:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            written.append(target)
    return written


def stale(files: Sequence[str], *, include: Sequence[Path], out: Path) -> list[str]:
    """``ackbus gen --check``: generate ``files`` into a temporary folder and compare
    with ``out``. Returns one line per generated file that ``out`` lacks (``missing:
    NAME``) or holds with other contents (``stale: NAME``); empty when up to date. Other
    files in ``out`` are not judged (they may be the user's)."""
    problems = []
    with _fresh(files, include) as generated:
        for name, src in generated:
            target = out / name
            if not target.is_file():
                problems.append(f"missing: {name}")
            elif not filecmp.cmp(src, target, shallow=False):
                problems.append(f"stale: {name}")
    return problems


_PACKAGE = re.compile(rb"^\s*package\s+([A-Za-z_][\w.]*)\s*;", re.MULTILINE)


def include_roots(files: Sequence[str]) -> list[Path]:
    """The include folders for ``files`` given without ``-I``: for each file, the folder
    its package's path starts from (``schemas`` for ``schemas/orders/orders.proto``
    declaring ``package orders;``, or ``package acme.orders;`` in
    ``schemas/acme/orders/``). A file directly in the working folder needs none.

    Raises :class:`GenerationError` saying which ``-I`` to give when a file in a folder
    has no package, or a package its folders do not end with: with ``-I .`` its module
    would be named after the whole path (``schemas.orders.orders_pb2``), which is rarely
    what its imports expect."""
    roots: list[Path] = []
    for name in files:
        path = Path(name)
        folder = path.parent
        if folder == Path():
            root: Path | None = Path()
        else:
            try:
                text = path.read_bytes()
            except OSError as exc:
                raise GenerationError(f"{name}: {exc.strerror}") from None
            found = _PACKAGE.search(text)
            parts = found.group(1).decode().split(".") if found else []
            n = len(parts)
            root = None
            if parts and folder.parts[-n:] == tuple(parts):
                root = Path(*folder.parts[:-n]) if len(folder.parts) > n else Path()
        if root is None:
            module = path.with_suffix("").as_posix().replace("/", ".").replace("-", "_")
            raise GenerationError(
                f"{name}: no -I given, and its folders do not follow its package, so the "
                f"include folder cannot be inferred (with -I . it would become the module "
                f"{module}_pb2). Give the folder its imports start from, e.g. "
                f"ackbus gen -I {folder} ... {name} (or -I . to keep that module name)"
            )
        if root not in roots:
            roots.append(root)
    return roots


def descriptor_set(files: Sequence[str], include: Sequence[Path]) -> d.FileDescriptorSet:
    """Compile ``files`` (relative to an include folder) with their imports and source
    info; raise :class:`GenerationError` when protoc fails."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="ackbus-descriptors-") as tmp:
        extra = ackbus_include(Path(tmp, "include"))
        out = Path(tmp, "set.binpb")
        args = [
            "grpc_tools.protoc",
            *(f"-I{p}" for p in include),
            f"-I{extra}",
            f"-I{_grpc_tools_include()}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            "--include_source_info",
            *files,
        ]
        if protoc.main(args) != 0:
            raise GenerationError(f"protoc failed on {', '.join(files)}{hints(files, include)}")
        return d.FileDescriptorSet.FromString(out.read_bytes())


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed as a console script beside this interpreter."""
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    which = shutil.which(name)
    if which is None:
        raise GenerationError(f"protoc plugin {name!r} is not installed")
    return which


def run(
    files: Sequence[str],
    *,
    include: Sequence[Path],
    out: Path,
    ackbus: bool,
) -> None:
    """Compile ``files`` (paths relative to an include dir) into ``out``.

    Always writes protoc's ``_pb2.py`` and mypy-protobuf's ``_pb2.pyi``; with
    ``ackbus=True`` also the ackbus clients and handlers. Raises
    :class:`GenerationError` with protoc's messages when compilation fails.
    """
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        *(f"-I{p}" for p in include),
        f"-I{_grpc_tools_include()}",
        f"--python_out={out}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--mypy_out=quiet:{out}",
    ]
    if ackbus:
        args += [
            f"--plugin=protoc-gen-ackbus={_plugin('protoc-gen-ackbus')}",
            f"--ackbus_out={out}",
        ]
    args += list(files)
    code = protoc.main(args)
    if code != 0:
        raise GenerationError(
            f"protoc failed (exit {code}) on {', '.join(files)}{hints(files, include)}"
        )


_RPC = re.compile(
    rb"\brpc\s+(\w+)\s*\(\s*(?:stream\s+)?(\.?[\w.]+)\s*\)"
    rb"\s*returns\s*\(\s*(?:stream\s+)?(\.?[\w.]+)\s*\)"
)


def hints(files: Sequence[str], include: Sequence[Path]) -> str:
    """What protoc's message does not say, for a failure on ``files``: an rpc named like
    its request or response message (``rpc Ping(Ping)``), where protoc says only
    ``"Ping" is not a message type.`` because inside a service the name means the rpc.
    Empty when nothing is recognised."""
    out = []
    for name in files:
        path = next(
            (p for p in (Path(name), *(Path(i, name) for i in include)) if p.is_file()), None
        )
        if path is None:
            continue
        text = path.read_bytes()
        found = _PACKAGE.search(text)
        package = found.group(1).decode() + "." if found else ""
        for m in _RPC.finditer(text):
            rpc, request, response = (g.decode() for g in m.groups())
            for role, typ in (("request", request), ("response", response)):
                if typ == rpc:
                    line = text.count(b"\n", 0, m.start()) + 1
                    out.append(
                        f"{name}:{line}: rpc {rpc} is named like its {role} message {typ}: "
                        f"inside a service {typ!r} means the rpc itself, hence protoc's "
                        f'"{typ}" is not a message type. Write the message\'s full name: '
                        f"{package}{typ} (or .{package}{typ})"
                    )
    return "".join(f"\nhint: {h}" for h in out)
