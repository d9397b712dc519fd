"""Dead letters pruned by age (``?dead_letters_ttl=SECONDS`` on either store's URL), at
start and while messages fail, as inbox records are; without it they are kept."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import helpers
import pytest
from ackbus.endpoint import Endpoint
from ackbus.store import PostgresStore, SqliteStore, open_store
from ackbus.wire_pb2 import Bye

QUICK = helpers.FAST.with_(ack_timeout=0.1, deadline=0.3)
"""Nobody handles Bye here: each send fails (no route) within 0.3 s, a dead letter."""


def test_the_url_option_is_checked(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/x.db?dead_letters_ttl=86400")
    assert store.dead_letters_ttl == 86400.0
    assert open_store(f"sqlite:///{tmp_path}/y.db").dead_letters_ttl is None
    pg = open_store("postgresql:///app?dead_letters_ttl=3600&sslmode=disable")
    assert pg.dead_letters_ttl == 3600.0
    for bad in (
        f"sqlite:///{tmp_path}/z.db?dead_letters_ttl=0",
        "postgresql:///a?dead_letters_ttl=week",
    ):
        with pytest.raises(ValueError, match="dead_letters_ttl must be a positive number"):
            open_store(bad)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_dead_letters_older_than_their_ttl_are_pruned(
    kind: str, memory_hub: helpers.HubBus, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/dealer.db?dead_letters_ttl=1"
        admin: SqliteStore | PostgresStore = SqliteStore(tmp_path / "dealer.db")
    else:
        base = request.getfixturevalue("pg_url")
        url = f"{base}&dead_letters_ttl=1"
        admin = PostgresStore(base)
        # Another service's dead letter in the shared schema: not this endpoint's to prune.
        async with Endpoint("other", memory_hub.address, backend=memory_hub.backend,
                            store=base, policy=QUICK) as other:  # fmt: skip
            await (await other.send(Bye(reason="theirs"), wait_ack=False)).wait(5)

    def endpoint() -> Endpoint:
        return Endpoint(
            "dealer", memory_hub.address, backend=memory_hub.backend, store=url, policy=QUICK
        )

    async with endpoint() as ep:
        old = await ep.send(Bye(reason="old"), wait_ack=False)
        await old.wait(5)
    assert not old
    theirs = 1 if kind == "postgresql" else 0
    assert len(admin.dead_letters()) == 1 + theirs
    await asyncio.sleep(1.1)  # "old" is now older than the TTL
    async with endpoint() as ep:  # start prunes, and so does the next failure
        new = await ep.send(Bye(reason="new"), wait_ack=False)
        await new.wait(5)
        deadline = time.monotonic() + 5
        while {d.msg_id for d in admin.dead_letters()} & {old.message_id}:
            assert time.monotonic() < deadline, "the old dead letter was not pruned"
            await asyncio.sleep(0.05)
    left = [d.msg_id for d in admin.dead_letters()]
    assert new.message_id in left
    assert old.message_id not in left
    assert len(left) == 1 + theirs
