"""``ackbus gen`` on any project's schemas, and what it does with bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ackbus.cli import main

SERVICE = """\
syntax = "proto3";
package shop;
import "ackbus/options.proto";
import "google/protobuf/empty.proto";

// Put an order in.
message PlaceOrder {
  option (ackbus.legacy_name) = "ORDER";
  string sku = 1;
  uint32 quantity = 2;
}

service Shop {
  option (ackbus.service_policy) = { max_attempts: 4 };
  rpc PlaceOrder(shop.PlaceOrder) returns (google.protobuf.Empty);
}
"""


def _gen(tmp_path: Path, schemas: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "proto"
    for name, text in schemas.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "ackbus.cli", "gen", "-I", "proto", "-o", "out", *files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _written(tmp_path: Path) -> list[str]:
    out = tmp_path / "out"
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def test_gen_a_project_schema_with_ackbus_options(tmp_path: Path) -> None:
    run = _gen(tmp_path, {"shop/shop.proto": SERVICE}, "proto/shop/shop.proto")
    assert run.returncode == 0, run.stderr
    assert "wrote 3 files" in run.stdout
    assert _written(tmp_path) == ["shop/shop_ackbus.py", "shop/shop_pb2.py", "shop/shop_pb2.pyi"]
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "from shop import shop_ackbus as s; "
            "print(s.REGISTRY['ORDER'].full_name, "
            "s.ShopHandler.__ackbus_methods__[0].policy.max_attempts)",
        ],
        cwd=tmp_path / "out",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.stdout.split() == ["shop.PlaceOrder", "4"], check.stderr


def test_gen_in_process_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.proto").write_text('syntax = "proto3";\npackage a;\nmessage A {}\n')
    code = main(
        ["gen", "-I", str(tmp_path), "-o", str(tmp_path / "out"), str(tmp_path / "a.proto")]
    )
    assert code == 0
    assert (tmp_path / "out/a_ackbus.py").exists()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "gen" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("schema", "error"),
    [
        (
            'syntax = "proto3";\npackage b;\nmessage X {\n  int32 a = 1\n}\n',
            'bad.proto:5:1: Expected ";".',
        ),
        (
            'syntax = "proto3";\npackage b;\nimport "ackbus/options.proto";\n'
            'message X {\n  option (ackbus.message_policy) = { max_attempts: "many" };\n}\n',
            "bad.proto:5:",
        ),
        (
            'syntax = "proto3";\npackage b;\nimport "ackbus/options.proto";\n'
            "message X {\n  option (ackbus.message_policy) = { jitter: 3 };\n}\n",
            "--ackbus_out: bad.proto:5: message b.X: invalid policy: "
            "jitter must be within [0, 1], got 3.0",
        ),
        (
            'syntax = "proto2";\npackage b;\nimport "google/protobuf/empty.proto";\n'
            "message X {\n  optional int32 timeout = 1;\n  optional int32 timeout_ = 2;\n}\n"
            "service S { rpc Do(X) returns (google.protobuf.Empty); }\n",
            "--ackbus_out: field b.X.timeout_ (bad.proto:6) and field b.X.timeout (bad.proto:5) "
            "both become 'timeout_' in the keyword arguments of rpc b.S.Do",
        ),
    ],
    ids=["syntax", "option-type", "option-value", "collision"],
)
def test_bad_input_fails_with_file_and_line_and_writes_nothing(
    tmp_path: Path, schema: str, error: str
) -> None:
    good = 'syntax = "proto3";\npackage g;\nmessage G { int32 a = 1; }\n'
    run = _gen(tmp_path, {"bad.proto": schema, "good.proto": good}, "good.proto", "bad.proto")
    assert run.returncode == 1
    assert error in run.stderr
    assert "ackbus gen: error: protoc failed" in run.stderr
    assert not (tmp_path / "out").exists()  # not even good.proto's files


def test_failure_leaves_existing_output_alone(tmp_path: Path) -> None:
    assert _gen(tmp_path, {"shop/shop.proto": SERVICE}, "proto/shop/shop.proto").returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.py")}
    broken = SERVICE.replace("uint32 quantity = 2;", "uint32 quantity = 2")
    assert _gen(tmp_path, {"shop/shop.proto": broken}, "proto/shop/shop.proto").returncode == 1
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.py")} == before


@pytest.mark.parametrize(
    ("blocked", "named"),
    [
        (["grpc_tools"], "grpcio-tools"),
        (["mypy_protobuf"], "mypy-protobuf"),
        (["jinja2", "grpc_tools"], "grpcio-tools, jinja2"),
    ],
)
def test_gen_without_the_codegen_extra_says_what_to_install(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    blocked: list[str],
    named: str,
) -> None:
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    (tmp_path / "a.proto").write_text('syntax = "proto3";\n')
    code = main(["gen", "-I", str(tmp_path), "-o", str(tmp_path / "out"), "a.proto"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.splitlines() == [
        f"ackbus gen needs the code generator: pip install 'ackbus[codegen]' (missing: {named})"
    ]
    assert not (tmp_path / "out").exists()
