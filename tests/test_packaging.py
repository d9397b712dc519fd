"""What ``pip install ackbus`` brings: the runtime with pyzmq and protobuf, the code
generator's dependencies only with the ``codegen`` extra, and a runtime (generated code
included) that runs without them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CODEGEN = {"grpcio-tools", "jinja2", "mypy-protobuf", "pyyaml"}


def _wheel(tmp_path: Path) -> Path:
    """Build a wheel from a copy of the sources (the tree stays clean)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("runtime", "codegen"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp_path / "wheel"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"),
            *("--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), "."),
        ],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("ackbus-*.whl")
    return wheel


def _wheel_requirements(tmp_path: Path) -> list[Requirement]:
    """The wheel's ``Requires-Dist`` lines."""
    with zipfile.ZipFile(_wheel(tmp_path)) as zf:
        (metadata,) = (n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(metadata).decode()
    lines = text.splitlines()
    return [Requirement(x.split(":", 1)[1]) for x in lines if x.startswith("Requires-Dist:")]


def test_wheel_needs_the_code_generator_only_with_the_codegen_extra(tmp_path: Path) -> None:
    requirements = _wheel_requirements(tmp_path)
    unconditional = {r.name.lower() for r in requirements if r.marker is None}
    assert unconditional == {"pyzmq", "protobuf"}
    codegen = {r.name.lower(): str(r.marker) for r in requirements if r.name.lower() in CODEGEN}
    assert codegen == dict.fromkeys(CODEGEN, 'extra == "codegen"')


def test_the_wheel_holds_the_packages_and_none_of_the_repositorys_tools(tmp_path: Path) -> None:
    """``python -m ackbus_codegen.build`` shipped in the wheel and failed outside this
    repository ("Missing input file"): the repository's tools (tools/, bench/, fuzz/,
    examples/) stay out; users check their generated code with ``ackbus gen --check``."""
    with zipfile.ZipFile(_wheel(tmp_path)) as zf:
        names = [n for n in zf.namelist() if ".dist-info/" not in n]
    assert {n.split("/")[0] for n in names} == {"ackbus", "ackbus_codegen"}
    assert "ackbus_codegen/build.py" not in names
    assert "ackbus_codegen/protoc.py" in names  # ackbus gen, and gen --check
    assert "ackbus/options.proto" in names


def test_runtime_and_generated_code_do_not_import_the_code_generator() -> None:
    code = (
        "import sys, ackbus, ackbus.blocking, ackbus.hub\n"
        "import poker.cards_ackbus, poker.lobby_ackbus, poker.table_ackbus\n"
        "from ackbus import BlockingEndpoint, Endpoint, Hub\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('grpc_tools', 'jinja2', 'mypy_protobuf', 'yaml', 'ackbus_codegen')))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT / "generated")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.strip() == "[]", run.stdout


def test_observability_extras_are_imported_only_by_their_own_modules() -> None:
    """``pip install ackbus`` stays lean: an endpoint with middleware, the hub and the
    blocking client import neither prometheus-client nor OpenTelemetry; the wheel
    requires them only with the ``metrics`` and ``otel`` extras."""
    code = (
        "import sys, ackbus, ackbus.blocking, ackbus.hub, ackbus.middleware\n"
        "from ackbus.endpoint import Endpoint\n"
        "Endpoint('a', 'tcp://127.0.0.1:1', middleware=[ackbus.middleware.Middleware()])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('prometheus_client', 'opentelemetry')))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT / "generated")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.strip() == "[]", run.stdout
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {Requirement(r).name for r in project["dependencies"]}
    assert core == {"pyzmq", "protobuf"}
    extras = project["optional-dependencies"]
    assert [Requirement(r).name for r in extras["metrics"]] == ["prometheus-client"]
    assert [Requirement(r).name for r in extras["otel"]] == ["opentelemetry-api"]
