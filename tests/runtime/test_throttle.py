"""The log throttle: one line per key per minute, and how many were held back."""

from __future__ import annotations

from ackbus._throttle import MORE_KEYS, Throttle


def test_one_line_per_key_per_interval_then_the_count_held_back() -> None:
    now = [0.0]
    throttle = Throttle(every=60.0, clock=lambda: now[0])
    assert throttle.allow("BAD_SIGNATURE") == ("BAD_SIGNATURE", 0)
    assert throttle.allow("MALFORMED") == ("MALFORMED", 0)  # keys are apart
    for _ in range(5):
        assert throttle.allow("BAD_SIGNATURE") is None
    now[0] = 59.9
    assert throttle.allow("BAD_SIGNATURE") is None
    now[0] = 60.0
    assert throttle.allow("BAD_SIGNATURE") == ("BAD_SIGNATURE", 6)
    assert throttle.allow("BAD_SIGNATURE") is None
    now[0] = 200.0
    assert throttle.allow("BAD_SIGNATURE") == ("BAD_SIGNATURE", 1)


def test_beyond_its_capacity_new_keys_share_one_line() -> None:
    now = [0.0]
    throttle = Throttle(every=60.0, keys=2, clock=lambda: now[0])
    assert throttle.allow("a") == ("a", 0)
    assert throttle.allow("b") == ("b", 0)
    assert throttle.allow("c") == (MORE_KEYS, 0)
    assert throttle.allow("d") is None  # MORE_KEYS had its line this minute
    now[0] = 61.0  # a and b's minute is over: they are forgotten, room again
    assert throttle.allow("e") == ("e", 0)
