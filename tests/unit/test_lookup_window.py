"""The look-up window follows the change rate: none for a lone change, fuller requests under
load, never past twice the configured window."""

from __future__ import annotations

import pytest

from daemon.keycrm.lookups import FULL, ArrivalRate

WINDOW = 0.25  # keycrm.lookup_window's default


def steady(
    per_second: float, seconds: float = 10.0, step: float = 0.02
) -> tuple[ArrivalRate, float]:
    """SKUs arriving one at a time at `per_second` for `seconds`; the rate and the clock after."""
    rate = ArrivalRate()
    now, owed = 0.0, 0.0
    while now < seconds:
        owed += per_second * step
        while owed >= 1:
            rate.arrived(1, now)
            owed -= 1
        now += step
    return rate, now


def test_a_lone_change_is_looked_up_at_once() -> None:
    rate = ArrivalRate()
    assert rate.window(WINDOW, 0.0) == 0.0
    rate.arrived(1, 100.0)
    assert rate.window(WINDOW, 100.0) == 0.0
    slow, now = steady(2.0)  # a change every half second: no company within the window
    assert slow.window(WINDOW, now) == 0.0


@pytest.mark.parametrize(("per_second", "at_least"), [(50.0, 20), (100.0, FULL - 5)])
def test_under_load_a_look_up_waits_for_a_fuller_request(per_second: float, at_least: int) -> None:
    rate, now = steady(per_second)
    window = rate.window(WINDOW, now)
    assert window <= 2 * WINDOW
    assert window * per_second >= at_least  # SKUs one request carries (fewer once FULL wait)


def test_the_rate_decays_once_changes_stop() -> None:
    rate, now = steady(100.0)
    assert rate.window(WINDOW, now) > 0
    assert rate.window(WINDOW, now + 15.0) == 0.0
