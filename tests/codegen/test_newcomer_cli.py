"""The command line's rough edges a newcomer hit (issue 20, section 5), each as it now
behaves, through the installed ``ackbus`` command in a project folder of its own:

* ``ackbus gen`` without ``-I`` infers the include folder from the package, or refuses
  saying which ``-I`` to give;
* ``ackbus gen --check`` tells a project whether its generated code is fresh;
* ``rpc Ping(Ping)`` gets a hint beside protoc's ``"Ping" is not a message type.``;
* ``ackbus dead-letters replay --timeout 3`` ends within its timeout, with one line.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from proc_harness import free_port

ORDERS = """\
syntax = "proto3";
package orders;
import "ackbus/options.proto";
import "google/protobuf/empty.proto";

message PlaceOrder {
  string sku = 1;
  repeated string items = 2;
}

service Orders {
  rpc PlaceOrder(orders.PlaceOrder) returns (google.protobuf.Empty);
}
"""


def ackbus(cwd: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ackbus.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def project(tmp_path: Path, text: str = ORDERS, name: str = "orders/orders.proto") -> Path:
    schema = tmp_path / "schemas" / name
    schema.parent.mkdir(parents=True)
    schema.write_text(text)
    return schema


def test_gen_without_include_infers_the_root_from_the_package(tmp_path: Path) -> None:
    """It used to succeed with modules importing ``schemas.orders.orders_pb2``."""
    project(tmp_path)
    run = ackbus(tmp_path, "gen", "-o", "out", "schemas/orders/orders.proto")
    assert run.returncode == 0, run.stderr
    assert "no -I given: using -I schemas" in run.stdout
    files = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.py*")
    )
    assert files == ["orders/orders_ackbus.py", "orders/orders_pb2.py", "orders/orders_pb2.pyi"]
    generated = (tmp_path / "out/orders/orders_ackbus.py").read_text()
    assert "from orders import orders_pb2" in generated
    assert "schemas" not in generated


def test_gen_without_include_refuses_when_folders_do_not_follow_the_package(
    tmp_path: Path,
) -> None:
    project(tmp_path, ORDERS.replace("orders;", "shop;").replace("orders.Place", "shop.Place"))
    run = ackbus(tmp_path, "gen", "-o", "out", "schemas/orders/orders.proto")
    assert run.returncode == 1
    assert "with -I . it would become the module schemas.orders.orders_pb2" in run.stderr
    assert "ackbus gen -I schemas/orders ... schemas/orders/orders.proto" in run.stderr
    assert not (tmp_path / "out").exists()
    # the fix it names works
    run = ackbus(
        tmp_path, "gen", "-I", "schemas/orders", "-o", "out", "schemas/orders/orders.proto"
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out/orders_ackbus.py").is_file()


def test_gen_check_tells_whether_generated_code_is_fresh(tmp_path: Path) -> None:
    schema = project(tmp_path)
    args = ("-I", "schemas", "-o", "out", "schemas/orders/orders.proto")
    run = ackbus(tmp_path, "gen", "--check", *args)
    assert run.returncode == 1
    assert "missing: orders/orders_ackbus.py" in run.stderr
    assert not (tmp_path / "out").exists()  # --check writes nothing
    assert ackbus(tmp_path, "gen", *args).returncode == 0
    run = ackbus(tmp_path, "gen", "--check", *args)
    assert (run.returncode, run.stdout.strip()) == (
        0,
        "ackbus gen --check: the generated code in out is up to date",
    )
    schema.write_text(ORDERS.replace("string sku = 1;", "string sku = 1;\n  uint32 quantity = 3;"))
    run = ackbus(tmp_path, "gen", "--check", *args)
    assert run.returncode == 1
    assert "is stale; run the same command without --check" in run.stderr
    assert "stale: orders/orders_pb2.py" in run.stderr
    assert "stale: orders/orders_ackbus.py" in run.stderr


def test_the_repository_build_tool_is_not_in_the_package() -> None:
    """``python -m ackbus_codegen.build --check`` shipped in the wheel and failed outside
    this repository ("Missing input file"); it is tools/generate.py now."""
    import importlib.util

    assert importlib.util.find_spec("ackbus_codegen.build") is None
    root = Path(__file__).resolve().parents[2]
    assert (root / "tools" / "generate.py").is_file()


def test_an_rpc_named_like_its_message_gets_a_hint(tmp_path: Path) -> None:
    project(
        tmp_path,
        ORDERS + "\nmessage Ping {}\nservice Health {\n  rpc Ping(Ping) returns (Ping);\n}\n",
    )
    run = ackbus(tmp_path, "gen", "-I", "schemas", "-o", "out", "schemas/orders/orders.proto")
    assert run.returncode == 1
    assert '"Ping" is not a message type.' in run.stderr  # protoc's own words, as before
    assert (
        "hint: schemas/orders/orders.proto:17: rpc Ping is named like its request message "
        "Ping: inside a service 'Ping' means the rpc itself, hence protoc's \"Ping\" is not "
        "a message type. Write the message's full name: orders.Ping (or .orders.Ping)"
    ) in run.stderr


async def test_dead_letters_replay_honours_its_timeout_and_ends_with_one_line(
    tmp_path: Path,
) -> None:
    """It used to exit after 5.35 s (connect_timeout's 5 s) with a traceback."""
    from ackbus import Endpoint
    from ackbus.wire_pb2 import Bye
    from helpers import FAST, running_hub

    db = tmp_path / "dead.db"
    async with (  # a dead letter: nobody handles Bye
        running_hub("tcp") as bus,
        Endpoint("dealer", bus.address, store=f"sqlite:///{db}", policy=FAST) as ep,
    ):
        assert not await ep.send(Bye(reason="x"), timeout=0.3)
    address = f"tcp://127.0.0.1:{free_port()}"  # no hub there now
    started = time.monotonic()
    run = await asyncio.to_thread(
        ackbus,
        tmp_path,
        *("dead-letters", "replay", "--all", "--store", str(db), "--hub", address),
        *("--timeout", "1"),
    )
    took = time.monotonic() - started
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("ackbus dead-letters: error: ")
    assert "answered within 1.0 s" in lines[0]
    assert "Traceback" not in run.stderr
    assert took < 1.0 + 4.0  # the timeout, and the interpreter's start on a loaded machine


def test_a_timeout_flag_must_be_a_positive_number(tmp_path: Path) -> None:
    run = ackbus(
        tmp_path, "dead-letters", "replay", "--all", "--store", "x.db", "--hub", "tcp://h:1",
        "--timeout", "0",
    )  # fmt: skip
    assert run.returncode == 2
    assert "--timeout: must be above 0, got 0" in run.stderr
