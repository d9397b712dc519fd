"""The README's user's day runs as written, and its mypy setup for generated code works
(issue 20, section 5: the sample used an undefined ``log`` and was a fragment)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MARKER = "<!-- the user's day: tests/test_readme.py runs the next block as written -->"


def _block(after: str, lang: str) -> str:
    """The first ```lang block after the text ``after``."""
    start = README.index(after)
    found = re.compile(rf"```{lang}\n(.*?)```", re.DOTALL).search(README, start)
    assert found is not None, f"no {lang} block after {after!r}"
    return found.group(1)


def test_the_users_day_runs_as_written(tmp_path: Path) -> None:
    day = tmp_path / "day.py"
    day.write_text(_block(MARKER, "python"))
    run = subprocess.run(
        [sys.executable, str(day)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "generated")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    printed = "acked: True after 1 attempt(s); the table dealt 1 hand(s) before it answered"
    assert run.stdout.strip() == printed
    assert f"It prints `{printed}`." in README
    assert run.stderr == ""


ORDERS = """\
syntax = "proto3";
package orders;
import "google/protobuf/empty.proto";

message PlaceOrder {
  string sku = 1;
  uint32 quantity = 2;
}

service Orders {
  rpc PlaceOrder(orders.PlaceOrder) returns (google.protobuf.Empty);
}
"""

APP = """\
from ackbus import Context, Endpoint
from orders import orders_ackbus, orders_pb2


class Orders(orders_ackbus.OrdersHandler):
    async def on_place_order(self, msg: orders_pb2.PlaceOrder, ctx: Context) -> None:
        print(msg.sku.upper(), msg.quantity + 1)


async def place(ep: Endpoint) -> bool:
    client = orders_ackbus.OrdersClient(ep)
    return bool(await client.send_place_order(sku="book", quantity={quantity}))
"""


def test_the_readmes_mypy_setup_checks_code_against_generated_modules(tmp_path: Path) -> None:
    """A project of one's own: schemas/, ``ackbus gen -o gen`` (the README's command, no
    -I), the README's [tool.mypy] block, and mypy --strict on code using the modules."""
    schema = tmp_path / "schemas" / "orders" / "orders.proto"
    schema.parent.mkdir(parents=True)
    schema.write_text(ORDERS)
    gen = subprocess.run(
        [sys.executable, "-m", "ackbus.cli", "gen", "-o", "gen", "schemas/orders/orders.proto"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    (tmp_path / "pyproject.toml").write_text(_block("tell mypy where they are", "toml"))

    def mypy(quantity: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "app.py").write_text(APP.replace("{quantity}", quantity))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # This repository's ackbus is an editable install, whose import hook mypy cannot
        # follow: it is given as a source folder, and (as for an installed package) only
        # the project's own files report errors. An installed wheel needs neither.
        env["MYPYPATH"] = os.pathsep.join(str(ROOT / d) for d in ("runtime", "codegen"))
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent", "app.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )

    good = mypy("2")
    assert good.returncode == 0, good.stdout + good.stderr
    bad = mypy('"two"')
    assert bad.returncode == 1
    # (the send methods live on the class both clients share: _OrdersCommands)
    assert 'Argument "quantity" to "send_place_order" of "_OrdersCommands" has incompatible' in (
        bad.stdout
    )
