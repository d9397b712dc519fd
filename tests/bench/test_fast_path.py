"""Unit tests of the pieces the fast path added (issue 7): message ids."""

from __future__ import annotations

from ackbus.wire import ID_SIZE, IdSource, id_of_order_key, order_key
from hypothesis import given
from hypothesis import strategies as st


def test_ids_are_16_bytes_and_unique_within_and_across_sources() -> None:
    first, second = IdSource(), IdSource()
    ids = [first.next() for _ in range(10_000)] + [second.next() for _ in range(10_000)]
    assert all(type(i) is bytes and len(i) == ID_SIZE for i in ids)
    assert len(set(ids)) == len(ids)


def test_short_hex_prefixes_of_consecutive_ids_differ() -> None:
    """Users pick a dead letter by a short id prefix (``dead-letters show 87b0c0``)."""
    source = IdSource()
    ids = [source.next() for _ in range(1000)]
    assert len({i.hex()[:8] for i in ids}) == len(ids)


def test_the_sequence_wraps_around_without_an_error() -> None:
    source = IdSource()
    source._next = (1 << 128) - 1
    assert len(source.next()) == ID_SIZE


def test_one_sources_ids_have_consecutive_order_keys() -> None:
    """A store keys its inbox by ``order_key``: one sender's records side by side."""
    first, second = IdSource(), IdSource()
    for source in (first, second):
        keys = [int.from_bytes(order_key(source.next()), "big") for _ in range(1000)]
        assert [k - keys[0] for k in keys] == list(range(1000))


@given(st.binary(min_size=ID_SIZE, max_size=ID_SIZE))
def test_an_order_key_gives_its_id_back(msg_id: bytes) -> None:
    key = order_key(msg_id)
    assert len(key) == ID_SIZE
    assert id_of_order_key(key) == msg_id
