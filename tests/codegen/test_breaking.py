"""``ackbus breaking``: each kind of break is reported with its line, additions pass,
``--allow`` accepts, and the command line exits non-zero on a break."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from ackbus_codegen.breaking import allowed, compare, descriptor_set

OLD = """
syntax = "proto3";
package shop;
import "ackbus/options.proto";
import "google/protobuf/empty.proto";

message Order {
  string id = 1;
  uint64 amount_cents = 2;
  string note = 3;
}
message RefundRequest { string id = 1; }
message Shipped { string id = 1; }
message Note { string text = 1; }

service Orders {
  rpc Place(Order) returns (google.protobuf.Empty);
  rpc Refund(RefundRequest) returns (google.protobuf.Empty);
  rpc OnShipped(Shipped) returns (google.protobuf.Empty) {
    option (ackbus.method_policy) = { kind: EVENT };
  }
}
"""


def check(tmp_path: Path, new: str, allow: tuple[str, ...] = ()) -> list[str]:
    (tmp_path / "old").mkdir(exist_ok=True)
    (tmp_path / "new").mkdir(exist_ok=True)
    (tmp_path / "old" / "shop.proto").write_text(OLD)
    (tmp_path / "new" / "shop.proto").write_text(new)
    old_set = descriptor_set(["shop.proto"], [tmp_path / "old"])
    new_set = descriptor_set(["shop.proto"], [tmp_path / "new"])
    return [str(b) for b in allowed(compare(old_set, new_set, ["shop.proto"]), allow)]


def test_additions_pass(tmp_path: Path) -> None:
    new = OLD.replace("string note = 3;", "string note = 3;\n  string coupon = 4;")
    new += "\nmessage Extra { string id = 1; }\n"
    new = new.replace(
        "rpc Refund(RefundRequest)",
        "rpc Cancel(Extra) returns (google.protobuf.Empty);\n  rpc Refund(RefundRequest)",
    )
    assert check(tmp_path, new) == []


def test_a_reserved_removal_passes_and_an_unreserved_one_breaks(tmp_path: Path) -> None:
    assert check(tmp_path, OLD.replace("string note = 3;", 'reserved 3; reserved "note";')) == []
    (found,) = check(tmp_path, OLD.replace("string note = 3;", ""))
    assert found.startswith("shop.proto:7: FIELD_REMOVED shop.Order.note")
    assert "reserved 3;" in found


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        ("uint64 amount_cents = 2;", "string amount_cents = 2;", "FIELD_RETYPED"),
        ("uint64 amount_cents = 2;", "repeated uint64 amount_cents = 2;", "FIELD_RETYPED"),
        ("uint64 amount_cents = 2;", "uint64 amount_cents = 5;", "FIELD_RENUMBERED"),
        ("message Note { string text = 1; }", "", "MESSAGE_REMOVED"),
        ("rpc Refund(RefundRequest)", "rpc GiveBack(RefundRequest)", "RPC_REMOVED"),
        ("rpc Place(Order)", "rpc Place(RefundRequest)", "RPC_INPUT_CHANGED"),
        ("{ kind: EVENT }", "{ kind: COMMAND }", "KIND_CHANGED"),
        ("{ kind: EVENT }", '{ kind: EVENT ordering_key: "id" }', "ORDERING_KEY_CHANGED"),
        ("service Orders {", "service Orders2 {", "SERVICE_REMOVED"),
    ],
)
def test_each_break_is_named_with_its_line(tmp_path: Path, old: str, new: str, rule: str) -> None:
    found = check(tmp_path, OLD.replace(old, new))
    assert any(f" {rule} " in line for line in found), found
    assert all(line.startswith("shop.proto:") for line in found)


def test_allow_accepts_a_rule_or_an_element(tmp_path: Path) -> None:
    new = OLD.replace("string note = 3;", "").replace("uint64 amount_cents", "string amount_cents")
    assert len(check(tmp_path, new)) == 2
    assert len(check(tmp_path, new, ("FIELD_REMOVED",))) == 1
    assert check(tmp_path, new, ("FIELD_REMOVED", "shop.Order.amount_cents")) == []


def test_the_command_exits_non_zero_on_a_break(tmp_path: Path) -> None:
    check(tmp_path, OLD.replace("uint64 amount_cents = 2;", "string amount_cents = 2;"))
    argv = [sys.executable, "-m", "ackbus.cli", "breaking", "--against", str(tmp_path / "old")]
    argv += ["-I", str(tmp_path / "new"), "shop.proto"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert "FIELD_RETYPED shop.Order.amount_cents" in run.stdout
    assert "1 breaking change" in run.stderr
    ok = subprocess.run([*argv, "--allow", "FIELD_RETYPED"], capture_output=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_the_example_schemas_against_themselves_pass() -> None:
    root = Path(__file__).resolve().parents[2] / "schemas"
    files = ["poker/table.proto", "poker/lobby.proto", "poker/cards.proto"]
    same = descriptor_set(files, [root])
    assert compare(same, same, files) == []


# -- `make generate` runs the check against the last committed schemas (tools/generate.py)

REPO = Path(__file__).resolve().parents[2]


def _generate_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "ackbus_tools_generate", REPO / "tools/generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _repo_with_shop(tmp_path: Path) -> Path:
    """A git repository whose last commit has schemas/shop.proto (OLD)."""
    root = tmp_path / "repo"
    (root / "schemas").mkdir(parents=True)
    (root / "schemas" / "shop.proto").write_text(OLD)
    (root / "schemas" / "gone.proto").write_text('syntax = "proto3";\npackage gone;\n')
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "schemas"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=60)
    return root


def test_generate_fails_on_a_break_against_the_last_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _generate_tool()
    root = _repo_with_shop(tmp_path)
    assert tool.schema_breaks(root) == []  # the committed schemas against themselves
    (root / "schemas" / "shop.proto").write_text(
        OLD.replace("uint64 amount_cents", "string amount_cents")
    )
    (root / "schemas" / "gone.proto").unlink()
    found = [str(b) for b in tool.schema_breaks(root)]
    assert len(found) == 2, found
    assert found[0].startswith("gone.proto:1: FILE_REMOVED gone.proto")
    assert found[1].startswith("shop.proto:9: FIELD_RETYPED shop.Order.amount_cents")
    assert tool.schema_breaks(root, allow=["FIELD_RETYPED", "gone.proto"]) == []
    # main() (what `make generate` runs) refuses before it writes anything.
    monkeypatch.setattr(tool, "ROOT", root)
    monkeypatch.setattr(tool, "build", lambda *a: pytest.fail("generated despite a break"))
    assert tool.main(["--allow", "FILE_REMOVED"]) == 1
    err = capsys.readouterr().err
    assert "schemas/shop.proto:9: FIELD_RETYPED shop.Order.amount_cents" in err
    assert "FILE_REMOVED" not in err
    assert "1 breaking change against HEAD: nothing generated" in err
    assert "make generate ALLOW=" in err


def test_make_generate_passes_allow_and_against_to_the_tool() -> None:
    run = subprocess.run(
        [
            "make",
            "-n",
            "-C",
            str(REPO),
            "generate",
            "ALLOW=FIELD_RETYPED,shop.Order",
            "AGAINST=HEAD~1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "tools/generate.py --allow 'FIELD_RETYPED,shop.Order' --against 'HEAD~1'" in run.stdout
