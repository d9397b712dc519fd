"""Fixtures of the durable tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_db import Db


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "postgresql":
        d = Db("postgresql", request.getfixturevalue("pg_url"))
    else:
        d = Db("sqlite", f"sqlite:///{tmp_path / 'orders.db'}")
    d.script("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, seats INTEGER NOT NULL)")
    return d
