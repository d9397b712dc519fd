"""Helpers for codegen tests: compile .proto text into the request protoc would send."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import ackbus.options_pb2  # noqa: F401  (options must be known before parsing)
import pytest
from ackbus_codegen.generate import Generation, generate
from ackbus_codegen.protoc import _grpc_tools_include, ackbus_include
from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

ROOT = Path(__file__).resolve().parents[2]

Compile = Callable[..., plugin_pb2.CodeGeneratorRequest]


@pytest.fixture
def compile_request(tmp_path: Path) -> Compile:
    """``compile_request({"x/a.proto": text, ...}, generate=["x/a.proto"])``."""
    from grpc_tools import protoc

    def run(
        files: dict[str, str], generate: list[str] | None = None
    ) -> plugin_pb2.CodeGeneratorRequest:
        src = tmp_path / "src"
        for name, text in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(textwrap.dedent(text))
        include = ackbus_include(tmp_path / "include")
        out = tmp_path / "descriptors.pb"
        args = [
            "protoc",
            f"-I{src}",
            f"-I{include}",
            f"-I{_grpc_tools_include()}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
        ]
        assert protoc.main(args) == 0, "test schema does not compile"
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
        return plugin_pb2.CodeGeneratorRequest(
            file_to_generate=generate or list(files), proto_file=fds.file
        )

    return run


@pytest.fixture
def gen(compile_request: Compile) -> Callable[..., Generation]:
    """Compile and generate in one step; returns the :class:`Generation`."""

    def run(files: dict[str, str], generate_only: list[str] | None = None) -> Generation:
        return generate(compile_request(files, generate_only))

    return run
