"""The package's public surface: ``__all__`` is complete and every name in it exists."""

import ackbus


def test_all_names_exist() -> None:
    missing = [name for name in ackbus.__all__ if not hasattr(ackbus, name)]
    assert missing == []


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(ackbus).items()
        if not name.startswith("_") and not isinstance(value, type(ackbus))
    }
    assert public <= set(ackbus.__all__), public - set(ackbus.__all__)


def test_all_is_sorted_and_unique() -> None:
    assert len(set(ackbus.__all__)) == len(ackbus.__all__)
