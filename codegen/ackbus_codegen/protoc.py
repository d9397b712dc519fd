"""Running protoc (from grpcio-tools) with the stock Python, mypy-protobuf and ackbus plugins."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence
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


def generate_to(files: Sequence[str], *, include: Sequence[Path], out: Path) -> list[Path]:
    """``ackbus gen``: compile any project's schemas into ``out``, all or nothing.

    ackbus's own protos are on the include path after the caller's folders. Output is
    written to a temporary folder first and copied into ``out`` only when protoc and
    every plugin succeeded, so a failure leaves ``out`` untouched. Returns the files
    written.
    """
    with tempfile.TemporaryDirectory(prefix="ackbus-gen-") as tmp:
        fresh = Path(tmp, "out")
        extra = ackbus_include(Path(tmp, "include"))
        run(files, include=[*include, extra], out=fresh, ackbus=True)
        written = []
        for src in sorted(p for p in fresh.rglob("*") if p.is_file()):
            target = out / src.relative_to(fresh)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            written.append(target)
    return written


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
            raise GenerationError(f"protoc failed on {', '.join(files)}")
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
        raise GenerationError(f"protoc failed (exit {code}) on {', '.join(files)}")
