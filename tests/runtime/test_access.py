"""A hub's access file (issue 18, item 3): read and checked whole at start, each mistake
a typed error naming the file and the line or key; and the answers the hub asks for."""

from __future__ import annotations

from pathlib import Path

import pytest
from ackbus import AccessFileError
from ackbus._access import Access
from helpers import write_access


def test_a_good_file_answers_who_may_serve_send_and_handle(tmp_path: Path) -> None:
    path = write_access(tmp_path)
    access = Access.load(path)
    assert access.may_serve("orders", "orders") is None
    assert access.may_serve("table", "table-canary") is None
    assert access.may_serve("orders", "table") == (
        f"key 'orders' may not register as service 'table': clients.orders.services in "
        f"{path} allows orders"
    )
    assert access.may_send("orders", "orders.Place") is None
    assert access.may_send("orders", "billing.Charge") is None
    assert access.may_send("orders", "billing.Refund") == (
        f"key 'orders' may not send billing.Refund: clients.orders.send in {path} "
        "allows orders.*, billing.Charge"
    )
    assert access.may_send("table", "anything.At.All") is None  # no send list: any type
    assert "allows nothing" in (access.may_send("audit", "audit.Note") or "")
    assert access.may_handle("table", "poker.StartHand") is None
    assert "may not handle lobby.Join" in (access.may_handle("table", "lobby.Join") or "")
    assert access.may_handle("orders", "x.Y") is None
    assert access.may_serve("stranger", "orders") == (
        f"key 'stranger' has no [clients.stranger] table in {path}: it may do nothing"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[clients.orders]\nservices = ["orders"\nsend = 1\n', r"not valid TOML: .*at line 3"),
        (
            "[clients.orders]\nservices = ['a']\nsevices = ['b']\n",
            r"line 3 \(clients\.orders\.sevices\): unknown key",
        ),
        (
            "[clients.orders]\nservices = 'orders'\n",
            r"line 2 \(clients\.orders\.services\): .* must be a list of non-empty strings",
        ),
        ("[clients.orders]\nsend = [1]\n", r"line 2 \(clients\.orders\.send\): .* must be a list"),
        ('[clients.orders]\nservices = [""]\n', r"line 2 \(clients\.orders\.services\): .*"),
        ("[client.orders]\nservices = ['a']\n", r"line 1 \(client\): unknown key 'client'"),
        ("clients = 3\n", r"line 1 \(clients\): clients must be a table"),
        ('[clients."bad name"]\nservices = []\n', r"line 1 \(clients\.bad name\): 'bad name' is"),
        ("[clients]\norders = 'x'\n", r"line 2 \(clients\.orders\): clients\.orders must be"),
        ("[clients.ops]\nadmin = 'yes'\n", r"line 2 \(clients\.ops\.admin\): .* true or false"),
    ],
)
def test_mistakes_name_the_file_and_the_line_or_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write_access(tmp_path, text)
    with pytest.raises(AccessFileError, match=f"^{path}: {message}") as info:
        Access.load(path)
    assert info.value.path == str(path)


def test_only_keys_marked_admin_may_ask_for_status_and_tail(tmp_path: Path) -> None:
    path = write_access(
        tmp_path, "[clients.ops]\nadmin = true\n\n[clients.table]\nservices = ['table']\n"
    )
    access = Access.load(path)
    assert access.may_admin("ops") is None
    assert access.may_serve("ops", "table") is not None  # admin alone serves nothing
    assert access.may_admin("table") == (
        f"key 'table' may not ask the hub for its status or traffic: only keys marked "
        f"admin = true in {path} may"
    )
    assert access.may_admin("stranger") is not None


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AccessFileError, match=r"nope\.toml: no such file"):
        Access.load(tmp_path / "nope.toml")
