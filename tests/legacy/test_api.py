"""The public surface of ackbus.legacy: ``__all__`` is complete, sorted, and real."""

import ackbus.legacy


def test_all_names_exist_and_are_sorted() -> None:
    assert [n for n in ackbus.legacy.__all__ if not hasattr(ackbus.legacy, n)] == []
    assert ackbus.legacy.__all__ == sorted(ackbus.legacy.__all__)


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(ackbus.legacy).items()
        if not name.startswith("_") and not isinstance(value, type(ackbus))
    }
    assert public <= set(ackbus.legacy.__all__), public - set(ackbus.legacy.__all__)


def test_the_format_error_is_an_ackbus_error_with_a_code() -> None:
    err = ackbus.legacy.LegacyFormatError("bad", type_name="StartHand")
    assert isinstance(err, ackbus.RemoteProtocolError)
    assert isinstance(err, ackbus.AckbusError)
    assert (err.code, err.type_name, str(err)) == ("MALFORMED", "StartHand", "MALFORMED: bad")
