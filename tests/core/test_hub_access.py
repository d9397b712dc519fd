"""The hub protocol with an access file (issue 18, item 3): who may register as what,
handle what and send what; a reload forgets what it no longer allows."""

from __future__ import annotations

from pathlib import Path

import pytest
from ackbus import Identity, RemoteProtocolError
from ackbus._access import Access
from ackbus.core.hub_protocol import UNAUTHORIZED, HubProtocol
from helpers import ACCESS_EXAMPLE, write_access

from .test_hub_protocol import Item, Recorder, Run


def hub(tmp_path: Path) -> tuple[HubProtocol[Item, Run, bytes], Recorder]:
    io = Recorder(up={b"t1", b"o1"})
    proto: HubProtocol[Item, Run, bytes] = HubProtocol(io, heartbeat=1.0, grace=0.0)
    proto.identity = Identity("hub", "h")
    proto.start(0.0)
    proto.set_access(Access.load(write_access(tmp_path)))
    proto.hello(
        b"t1", Identity("table", "t1"), b"tok-t1", ["poker.Deal"], [], 9, 0, 0.0, (), "table"
    )
    proto.hello(
        b"o1", Identity("orders", "o1"), b"tok-o1", ["orders.Place"], [], 9, 0, 0.0, (), "orders"
    )
    io.take()
    return proto, io


def test_a_key_registers_only_as_what_it_may_serve_and_handle(tmp_path: Path) -> None:
    proto, _ = hub(tmp_path)
    refusals = [
        (Identity("table", "x"), ["poker.Deal"], "orders", "may not register as service 'table'"),
        (Identity("table", "x"), ["lobby.Join"], "table", "may not handle lobby.Join"),
        (Identity("orders", "x"), ["poker.Deal"], "orders", "command type poker.Deal is handled"),
        (Identity("orders", "x"), [], "stranger", r"has no \[clients\.stranger\] table"),
    ]
    for ident, commands, key, words in refusals:
        with pytest.raises(RemoteProtocolError, match=words) as info:
            proto.hello(b"x", ident, b"tok-x", commands, [], 9, 0, 0.1, (), key)
        assert info.value.code == UNAUTHORIZED
        assert not proto.registered(b"x")
    # The same key may take its own type under its other service (it serves both), and
    # an in-process peer ("" key) is not governed by the file.
    proto.hello(
        b"c", Identity("table-canary", "c"), b"tok-c", ["poker.Deal"], [], 9, 0, 0.1, (), "table"
    )
    proto.hello(b"i", Identity("anything", "i"), b"tok-i", ["any.Type"], [], 9, 0, 0.1, (), "")
    assert proto.registered(b"c")
    assert proto.registered(b"i")


def test_a_message_the_key_may_not_send_is_refused_naming_the_rule(tmp_path: Path) -> None:
    proto, io = hub(tmp_path)
    proto.begin(b"o1", b"1" * 16, 0.1)
    proto.route(b"o1", Item(b"1" * 16, type="poker.Deal"), 0.1)
    proto.route_run(b"o1", Run([b"2" * 16, b"3" * 16], type="poker.Deal"), 0.1)
    proto.route(b"o1", Item(b"4" * 16, type="orders.Place"), 0.1)
    actions = io.take()
    refused = [a for a in actions if a[0] == "refused"]
    assert [a[2] for a in refused] == [b"1" * 16, b"2" * 16, b"3" * 16]
    assert {a[3] for a in refused} == {UNAUTHORIZED}
    assert "clients.orders.send" in refused[0][4]
    assert ("forward", b"o1", b"4" * 16, b"tok-o1") in actions
    assert proto.stats.unauthorized == 3


def test_a_reloaded_file_forgets_what_it_no_longer_allows(tmp_path: Path) -> None:
    proto, io = hub(tmp_path)
    proto.set_access(Access.load(write_access(tmp_path, ACCESS_EXAMPLE.replace('"table", ', ""))))
    assert (
        "forgotten",
        b"t1",
        "no longer allowed: key 'table' may not register as "
        f"service 'table': clients.table.services in {tmp_path / 'access.toml'} allows "
        "table-canary",
        "told",
    ) in io.take()
    assert proto.registered(b"o1")
    assert not proto.registered(b"t1")
