"""Real-world schemas: generate, import and ``mypy --strict`` the result.

* every .proto file of the installed googleapis-common-protos distribution (63 files,
  all proto3), all of them, not a sample;
* googleapis protos whose rpcs share request types (``tests/codegen/googleapis``,
  vendored from google-proto-files with their licence): Cloud Logging's
  ``ConfigServiceV2`` (``CreateBucket`` and ``CreateBucketAsync``) and Cloud
  Monitoring's ``MetricService`` (``CreateTimeSeries`` and ``CreateServiceTimeSeries``),
  generated, type-checked and served by real endpoints, each rpc reaching its handler;
* protobuf's own well-known types, ``descriptor.proto`` and ``compiler/plugin.proto``
  (proto2, with extension ranges, defaults and required fields) among
  them, checked against the types-protobuf stubs;
* ``tests/codegen/schemas/edge``: proto2 (required, defaults, groups, extensions),
  editions 2023 and 2024 (presence from features) and names Python treats specially.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ackbus
import pytest
from ackbus_codegen import protoc

HERE = Path(__file__).resolve().parent
RUNTIME_ROOT = Path(ackbus.__file__).resolve().parents[1]


def _googleapis_protos() -> tuple[Path, list[str]]:
    files = [
        f
        for f in importlib.metadata.files("googleapis-common-protos") or []
        if f.suffix == ".proto"
    ]
    root = Path(str(files[0].locate())).parents[len(files[0].parts) - 1]
    return root, sorted(f.as_posix() for f in files)


def _mypy(folder: Path, files: list[str]) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` in a clean folder (no project config), the runtime on its path.

    Every file to judge is named on the command line; imports (the runtime, protobuf)
    are followed for their types only, so this judges the generated code alone."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--explicit-package-bases",
            "--cache-dir",
            str(folder / ".mypy_cache"),
            *files,
        ],
        cwd=folder,
        env={**os.environ, "MYPYPATH": str(RUNTIME_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _python(folder: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _typed_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for pattern in ("*_ackbus.py", "*_pb2.pyi")
        for p in folder.rglob(pattern)
    )


VENDORED = HERE / "googleapis"
VENDORED_FILES = [
    "google/logging/v2/logging_config.proto",
    # Imported by logging_config.proto; googleapis-common-protos carries it renamed
    # (operations_proto.proto), so both cannot be imported into one process.
    "google/longrunning/operations.proto",
    "google/monitoring/v3/common.proto",
    "google/monitoring/v3/metric.proto",
    "google/monitoring/v3/metric_service.proto",
]


def _vendored_modules() -> list[str]:
    return [f.removesuffix(".proto").replace("/", ".") + "_ackbus" for f in VENDORED_FILES]


def test_googleapis_common_protos(tmp_path: Path) -> None:
    root, files = _googleapis_protos()
    assert len(files) >= 60
    out = tmp_path / "out"
    protoc.run(files, include=[root], out=out, ackbus=True)
    generated = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_ackbus.py"))
    # Every file with a message or a service gets a module; the rest are options only.
    assert len(generated) >= 50
    assert "google/longrunning/operations_proto_ackbus.py" in generated
    modules = [g.removesuffix(".py").replace("/", ".") for g in generated]
    run = _python(
        out,
        f"""
        import importlib
        for name in {modules!r}:
            module = importlib.import_module(name)
            assert module.__file__.startswith({str(out)!r}), module.__file__
            assert len(module.REGISTRY) > 0, name
        from google.longrunning import operations_proto_ackbus as ops
        names = [m.name for m in ops.OperationsHandler.__ackbus_methods__]
        print(len({modules!r}), names)
        """,
    )
    assert run.returncode == 0, run.stderr
    assert "'ListOperations', 'GetOperation', 'DeleteOperation'" in run.stdout
    # The vendored googleapis files beside them (imported in a process of their own),
    # type-checked with them: ackbus gen once refused both, "ackbus routes by message
    # type, so one service can handle each type with one rpc only".
    protoc.run(VENDORED_FILES, include=[VENDORED, root], out=out, ackbus=True)
    run = _python(
        out,
        f"""
        import importlib
        for name in {_vendored_modules()!r}:
            importlib.import_module(name)
        from google.logging.v2 import logging_config_ackbus as lc
        from google.monitoring.v3 import metric_service_ackbus as ms
        for handler in (lc.ConfigServiceV2Handler, ms.MetricServiceHandler):
            for spec in handler.__ackbus_methods__:
                print(spec.full_name, spec.request_type)
        """,
    )
    assert run.returncode == 0, run.stderr
    rpcs = dict(line.split() for line in run.stdout.splitlines())
    shared = "google.logging.v2.CreateBucketRequest"
    assert rpcs["google.logging.v2.ConfigServiceV2/CreateBucket"] == shared
    assert rpcs["google.logging.v2.ConfigServiceV2/CreateBucketAsync"] == shared
    shared = "google.monitoring.v3.CreateTimeSeriesRequest"
    assert rpcs["google.monitoring.v3.MetricService/CreateTimeSeries"] == shared
    assert rpcs["google.monitoring.v3.MetricService/CreateServiceTimeSeries"] == shared
    checked = _mypy(out, _typed_files(out))
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert checked.stdout.startswith("Success: no issues found")


def test_googleapis_rpcs_sharing_a_request_type_reach_their_own_handlers(
    tmp_path: Path,
) -> None:
    """tests/codegen/live/shared_request.py, on the generated code: a real hub and
    endpoints (ZeroMQ over ipc), each of CreateTimeSeries and CreateServiceTimeSeries
    run by its own service, CreateBucket and CreateBucketAsync answering requests with
    their own reply types, and a dynamic send of the shared type failing at once with
    the candidate rpcs."""
    root, _ = _googleapis_protos()
    out = tmp_path / "out"
    protoc.run(VENDORED_FILES, include=[VENDORED, root], out=out, ackbus=True)
    script = HERE / "live" / "shared_request.py"
    run = subprocess.run(
        [sys.executable, str(script), f"ipc://{tmp_path}/hub.sock"],
        cwd=out,
        env={**os.environ, "PYTHONPATH": str(out)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == (
        "metric handlers: [('series', 'CreateTimeSeries', 'projects/a'), "
        "('service-series', 'CreateServiceTimeSeries', 'projects/b')]"
    )
    assert lines[1] == "logging replies: projects/p/buckets/b1 operations/create-b2"
    assert lines[2] == (
        "ambiguous: ('google.monitoring.v3.MetricService/CreateServiceTimeSeries', "
        "'google.monitoring.v3.MetricService/CreateTimeSeries')"
    )
    assert "send(msg, method='google.monitoring.v3.MetricService/" in lines[3]
    assert lines[4] == (
        "dynamic send with method=: ('service-series', 'CreateServiceTimeSeries', 'projects/c')"
    )


def test_protobuf_well_known_types(tmp_path: Path) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc as grpc_protoc

    include = protoc._grpc_tools_include()
    files = sorted(p.relative_to(include).as_posix() for p in include.rglob("*.proto"))
    assert "google/protobuf/descriptor.proto" in files
    out = tmp_path / "out"
    out.mkdir()
    code = grpc_protoc.main(
        [
            "protoc",
            f"-I{include}",
            f"--plugin=protoc-gen-ackbus={protoc._plugin('protoc-gen-ackbus')}",
            f"--ackbus_out={out}",
            *files,
        ]
    )
    assert code == 0
    # Only the ackbus modules: the _pb2 modules are protobuf's own, installed, and
    # types-protobuf types those it ships (not the language-feature ones).
    stubs = Path(descriptor_pb2.__file__).parents[2] / "google-stubs"
    typed = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*_ackbus.py")
        if (stubs / p.relative_to(out).parent.relative_to("google"))
        .joinpath(p.name.replace("_ackbus.py", "_pb2.pyi"))
        .exists()
    )
    assert "google/protobuf/descriptor_ackbus.py" in typed
    assert "google/protobuf/compiler/plugin_ackbus.py" in typed
    assert len(typed) >= 10
    run = _python(
        out,
        f"""
        import importlib.util
        for path in {typed!r}:
            spec = importlib.util.spec_from_file_location("m", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            assert len(module.REGISTRY) > 0, path
        """,
    )
    assert run.returncode == 0, run.stderr
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--explicit-package-bases",
            *typed,
        ],
        cwd=out,
        env={**os.environ, "MYPYPATH": str(RUNTIME_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout[-3000:]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("edge")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ackbus.cli",
            "gen",
            "-I",
            str(HERE / "schemas"),
            "-o",
            str(out),
            "edge/legacy.proto",
            "edge/modern.proto",
            "edge/modern2024.proto",
            "edge/names.proto",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=HERE / "schemas",
    )
    assert run.returncode == 0, run.stderr
    return out, run.stderr


def test_edge_schemas_warn_about_what_python_cannot_spell(edge: tuple[Path, str]) -> None:
    _, stderr = edge
    assert (
        "warning: edge/names.proto:55: rpc edge.names.Names.Nothing skipped: type "
        "edge.names.None has a Python keyword in its name"
    ) in stderr
    assert "message edge.names.None left out of the registry" in stderr


def test_edge_schemas_pass_mypy_strict(edge: tuple[Path, str]) -> None:
    out, _ = edge
    files = _typed_files(out)
    assert len(files) == 8
    checked = _mypy(out, files)
    assert checked.returncode == 0, checked.stdout[-3000:]


def test_edge_schemas_build_the_right_messages(edge: tuple[Path, str]) -> None:
    out, _ = edge
    run = _python(
        out,
        """
        import asyncio
        from edge import legacy_ackbus, legacy_pb2, modern_ackbus, modern2024_ackbus
        from edge import names_ackbus, names_pb2

        class Bus:
            async def send(self, msg, **kw):
                self.msg = msg
            async def publish(self, msg, **kw):
                self.msg = msg
            async def request(self, msg, response_type, **kw):
                self.msg = msg
                return response_type()

        async def main():
            bus = Bus()
            names = names_ackbus.NamesClient(bus)
            await names.request_keywords(
                from_="a", class_=2, import_=["x"], lambda_=names_pb2.Inner(x=1),
                global_={"g": 1}, async_=0, None_=False,
            )
            m = bus.msg
            assert getattr(m, "from") == "a" and getattr(m, "class") == 2
            assert list(getattr(m, "import")) == ["x"] and getattr(m, "lambda").x == 1
            assert dict(getattr(m, "global")) == {"g": 1}
            assert m.WhichOneof("o") == "async" and m.HasField("None")
            await names.send_builtins(
                id=7, type="t", str="s", self_="me", timeout_="t/o", timeout=1.0,
                policy_="p", policy=None,
            )
            assert (bus.msg.id, bus.msg.type, bus.msg.str, bus.msg.timeout) == (7, "t", "s", "t/o")
            assert bus.msg.policy == "p"
            assert getattr(bus.msg, "self") == "me"

            await legacy_ackbus.OrdersClient(bus).send_place(id="o1", voucher=5)
            m = bus.msg
            assert m.IsInitialized() and not m.HasField("quantity") and m.quantity == 1
            assert m.mode == legacy_pb2.FAST and m.WhichOneof("payment") == "voucher"

            for client in (modern_ackbus.ItemsClient(bus), modern2024_ackbus.ItemsClient(bus)):
                await client.request_put(name="n", count=3, label="")
                m = bus.msg
                assert m.HasField("label") and m.count == 3 and not m.HasField("sub")
            assert [s.name for s in names_ackbus.typeHandler.__ackbus_methods__] == ["Do"]
            print("ok")

        asyncio.run(main())
        """,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
