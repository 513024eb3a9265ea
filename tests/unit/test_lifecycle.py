"""The item lifecycle's transitions, pure: every edge the store relies on, in milliseconds."""

from __future__ import annotations

from decimal import Decimal

import pytest

from daemon.core.models import Outcome, Value, Verdict, plain
from daemon.store.lifecycle import (
    Item,
    Status,
    Timing,
    claim,
    desire,
    force,
    release,
    release_held,
    settle,
    zeroing,
)

T = Timing(debounce=2.0, max_delay=10.0)
FIVE, ZERO = Value(quantity=5).encode(), Value(quantity=0).encode()


def acked(text: str) -> Item:
    return Item("c", "k", text, 0.0, Status.OK, acked=text, acked_at=0.0)


def new(item: Item | None, text: str, now: float, hold: int | None = None) -> Item | None:
    return desire(item, text, channel="c", key="k", now=now, timing=T, hold_scan=hold)


def test_a_new_item_is_pending_after_its_debounce() -> None:
    item = new(None, FIVE, 100)
    assert item is not None
    assert (item.status, item.due_at, item.diverged_at) == (Status.PENDING, 102, 100)


def test_an_unchanged_value_changes_nothing() -> None:
    assert new(acked(FIVE), FIVE, 100) is None


def test_in_flight_a_revert_to_the_acknowledged_value_stays_for_settle() -> None:
    item = claim(new(acked(ZERO), FIVE, 100) or acked(ZERO))
    assert item.may_hold == FIVE
    item = new(item, ZERO, 101) or item
    assert item.status is Status.SENDING
    settle(item, Verdict("k", Value(quantity=5), Outcome.ACKNOWLEDGED), 102, T, lambda _: 1)
    assert (item.status, item.acked) == (Status.PENDING, FIVE)


def test_claiming_anything_but_pending_is_a_bug() -> None:
    for state in (Status.OK, Status.HELD, Status.REJECTED, Status.SENDING):
        with pytest.raises(ValueError, match="cannot claim"):
            claim(Item("c", "k", FIVE, 0.0, state))


def test_zeroing_is_about_what_the_channel_may_show() -> None:
    assert zeroing(acked(FIVE), ZERO)
    assert not zeroing(acked(ZERO), ZERO)
    assert not zeroing(None, ZERO)
    assert not zeroing(acked(FIVE), Value(quantity=1).encode())


def test_a_held_zero_waits_for_release_and_survives_retries() -> None:
    item = new(acked(FIVE), ZERO, 100, hold=3)
    assert item is not None and item.status is Status.HELD and item.held_scan == 3
    assert new(item, ZERO, 101) is None  # the next scan's same zero: still held
    released = release_held(item, 200)
    assert (released.status, released.due_at) == (Status.PENDING, 200)


def test_an_unknown_outcome_forces_a_push_a_known_unsent_one_does_not() -> None:
    item = claim(new(acked(FIVE), Value(quantity=6).encode(), 100) or acked(FIVE))
    item.desired = FIVE  # reverted while 6 was in flight
    cut_off = release(Item(**{f: getattr(item, f) for f in item.__slots__}), 101, T)
    assert cut_off.status is Status.PENDING and cut_off.forced
    unsent = release(item, 101, T, sent=False)
    assert unsent.status is Status.OK


def test_a_resync_keeps_a_held_zero_held_and_forced() -> None:
    item = force(new(acked(FIVE), ZERO, 100, hold=3) or acked(FIVE), 200)
    assert (item.status, item.held_scan, item.forced) == (Status.HELD, 3, True)
    released = release_held(item, 300)
    assert (released.status, released.held_scan, released.due_at) == (Status.PENDING, None, 300)


def test_a_resync_is_backlog() -> None:
    item = force(acked(FIVE), 200)
    assert (item.status, item.priority, item.forced) == (Status.PENDING, 1, True)


def test_in_flight_a_look_up_zero_keeps_the_hold_and_stock_ends_it() -> None:
    item = claim(new(acked(FIVE), Value(quantity=6).encode(), 100) or acked(FIVE))
    item = new(item, ZERO, 101, hold=3) or item
    assert item.held_scan == 3
    item = new(item, Value(quantity=0, price=Decimal(2)).encode(), 102) or item  # a look-up
    assert item.held_scan == 3
    item = new(item, Value(quantity=2).encode(), 103) or item  # stock again
    assert item.held_scan is None


def test_rejection_of_an_outdated_value_retries_the_new_one() -> None:
    item = claim(new(None, FIVE, 100) or acked(FIVE))
    item.desired = ZERO
    settle(item, Verdict("k", Value(quantity=5), Outcome.REJECTED, "no"), 101, T, lambda _: 9)
    assert item.status is Status.PENDING and item.next_attempt == 0


@pytest.mark.parametrize(
    ("number", "text"),
    [
        ("100", "100"),
        ("1E+2", "100"),
        ("9.50", "9.5"),
        ("0.000", "0"),
        ("-0", "0"),
        ("12.25", "12.25"),
    ],
)
def test_decimals_print_as_people_write_them(number: str, text: str) -> None:
    assert plain(Decimal(number)) == text


def test_values_describe_prices_plainly() -> None:
    value = Value(quantity=3, price=Decimal("1E+2"))
    assert value.describe() == "qty=3 price=100"
    assert Value.decode(value.encode()).describe() == "qty=3 price=100"
