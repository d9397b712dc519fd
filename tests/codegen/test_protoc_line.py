"""The protoc lines of docs/codegen.md ("protoc as you call it"), run as written: with the
virtualenv activated and without, in a fresh project folder whose ``.venv`` is this one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ackbus.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/codegen.md"

ORDERS = """\
syntax = "proto3";
package shop;
import "ackbus/options.proto";
import "google/protobuf/empty.proto";

// Put an order in.
message PlaceOrder {
  string sku = 1;
  uint32 quantity = 2;
}

service Orders {
  option (ackbus.service_policy) = { max_attempts: 4 };
  rpc PlaceOrder(shop.PlaceOrder) returns (google.protobuf.Empty);
}
"""


def _blocks() -> list[str]:
    """The shell commands of each console block of the section, one script per block
    (``$ `` lines, with their ``\\`` continuation lines)."""
    text = DOC.read_text()
    section = text.split("### protoc as you call it", 1)[1].split("\n#", 1)[0]
    scripts = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        commands: list[str] = []
        continued = False
        for line in block.splitlines():
            if continued:
                commands[-1] += "\n" + line
            elif line.startswith("$ "):
                commands.append(line[2:])
            continued = line.endswith("\\")
        scripts.append("\n".join(commands))
    return scripts


def _environment() -> dict[str, str]:
    """This process's environment without any trace of the virtualenv: a user's shell."""
    venv_bin = str(Path(sys.prefix, "bin"))
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    paths = env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in paths if p.rstrip("/") != venv_bin)
    return env


def test_the_doc_shows_two_protoc_lines_one_activated() -> None:
    activated, plain = _blocks()
    assert activated.startswith("source .venv/bin/activate\n")
    assert '-I "$(ackbus gen --include-path)"' in activated
    assert "source" not in plain
    assert "--plugin=protoc-gen-ackbus=.venv/bin/protoc-gen-ackbus" in plain


@pytest.mark.parametrize("which", [0, 1], ids=["activated", "not-activated"])
def test_the_protoc_line_runs_as_written(tmp_path: Path, which: int) -> None:
    script = _blocks()[which]
    (tmp_path / "schemas/shop").mkdir(parents=True)
    (tmp_path / "schemas/shop/orders.proto").write_text(ORDERS)
    (tmp_path / ".venv").symlink_to(sys.prefix)
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"{script}\n{run.stdout}{run.stderr}"
    out = tmp_path / "src/gen/shop"
    assert sorted(p.name for p in out.iterdir()) == [
        "orders_ackbus.py",
        "orders_pb2.py",
        "orders_pb2.pyi",
    ]
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "from shop import orders_ackbus as o; "
            "print(o.OrdersHandler.__ackbus_methods__[0].policy.max_attempts, "
            "o.OrdersClient.__name__)",
        ],
        cwd=tmp_path / "src/gen",
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.stdout.split() == ["4", "OrdersClient"], check.stderr


def test_include_path_names_the_installed_copy(capsys: pytest.CaptureFixture[str]) -> None:
    import ackbus

    with pytest.raises(SystemExit) as exited:
        main(["gen", "--include-path"])
    assert exited.value.code == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "ackbus/options.proto").read_bytes() == (
        Path(ackbus.__file__).parent / "options.proto"
    ).read_bytes()
    assert folder / "ackbus" == Path(ackbus.__file__).resolve().parent
