"""The store contract: every backend keeps the item lifecycle exactly the same way.

Each test drives the store as the pipeline does (plan -> claim -> settle), including restarts
(`reopen`), and checks what may be sent next. Values are compared through `claim`, the only way
the dispatcher ever learns what to send.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from daemon.core.models import ItemValue, Outcome, StockLevel, Value, Verdict
from daemon.rules.guard import ScanGuard
from daemon.rules.plan import Contribution
from daemon.store import Store, Timing
from tests.store.conftest import Opener

pytestmark = pytest.mark.anyio

T = Timing(debounce=2.0, max_delay=30.0)


def no_backoff(_attempt: int) -> float:
    return 7.0


def q(n: int) -> Value:
    return Value(quantity=n)


def level(sku: str, quantity: int) -> StockLevel:
    return StockLevel(sku, 1, Decimal(quantity), Decimal(0), Decimal("9.5"))


async def status(store: Store, key: str = "k") -> str:
    rows = {row.key: row for row in await store.items("c")}
    return rows[key].status


async def acknowledge(store: Store, value: Value, now: float, key: str = "k") -> None:
    """Plan, claim and acknowledge one value: the channel now holds it."""
    await store.set_desired("c", {key: value}, now, T)
    assert await store.claim("c", now + 100, 10) == [ItemValue(key, value)]
    await store.settle("c", [Verdict(key, value, Outcome.ACKNOWLEDGED)], now, T, no_backoff)
    assert await status(store, key) == "ok"


async def test_records_report_only_real_changes(store: Store) -> None:
    assert [r.sku for r in await store.save_stock([level("A", 1), level("B", 2)], 1)] == ["A", "B"]
    assert [r.sku for r in await store.save_stock([level("A", 1), level("B", 3)], 2)] == ["B"]
    assert await store.save_stock([level("A", 1), level("B", 3)], 3) == []


async def test_records_page_in_sku_order(store: Store) -> None:
    await store.save_stock([level(f"S{n:03d}", n) for n in range(7)], 1)
    first = await store.records("", 3)
    second = await store.records(first[-1].sku, 3)
    third = await store.records(second[-1].sku, 3)
    assert [r.sku for r in first + second + third] == [f"S{n:03d}" for n in range(7)]
    assert await store.records(third[-1].sku, 3) == []


async def test_a_new_value_is_due_after_the_debounce_and_claimed_once(store: Store) -> None:
    assert await store.set_desired("c", {"k": q(1)}, 100, T) == 1
    assert await store.next_due("c") == 102
    assert await store.claim("c", 101, 10) == []
    assert await store.claim("c", 102, 10) == [ItemValue("k", q(1))]
    assert await status(store) == "sending"
    assert await store.claim("c", 200, 10) == []  # never two requests for one item
    assert await store.next_due("c") is None


async def test_max_delay_bounds_a_value_that_keeps_changing(store: Store) -> None:
    for second in range(0, 40, 1):
        await store.set_desired("c", {"k": q(second)}, 100 + second, T)
        if await store.next_due("c") == 130:
            break
    assert await store.next_due("c") == 130  # diverged at 100, max_delay 30


async def test_a_revert_while_in_flight_is_pushed_after_it(store: Store) -> None:
    """Issue 7, case 1: acknowledged 0, restocked to 5, back to 0 while 5 is in flight."""
    await acknowledge(store, q(0), 100)
    await store.set_desired("c", {"k": q(5)}, 200, T)
    assert await store.claim("c", 300, 10) == [ItemValue("k", q(5))]
    await store.set_desired("c", {"k": q(0)}, 301, T)  # equals acknowledged, but 5 is in flight
    await store.settle("c", [Verdict("k", q(5), Outcome.ACKNOWLEDGED)], 302, T, no_backoff)
    assert await status(store) == "pending"
    assert await store.claim("c", 400, 10) == [ItemValue("k", q(0))]


async def test_a_revert_in_flight_survives_the_death_of_the_process(
    store: Store, reopen: Opener
) -> None:
    """The push of 5 may have landed; the process died before its answer: 0 must go out."""
    await acknowledge(store, q(0), 100)
    await store.set_desired("c", {"k": q(5)}, 200, T)
    await store.claim("c", 300, 10)
    await store.set_desired("c", {"k": q(0)}, 301, T)
    await store.close()
    restarted = await reopen()
    try:
        assert await restarted.recover(400) == 1
        assert await restarted.claim("c", 400, 10) == [ItemValue("k", q(0))]
    finally:
        await restarted.close()


async def test_an_unanswered_push_is_sent_again_even_when_nothing_changed(
    store: Store, reopen: Opener
) -> None:
    await acknowledge(store, q(3), 100)
    await store.set_desired("c", {"k": q(4)}, 200, T)
    await store.claim("c", 300, 10)
    await store.set_desired("c", {"k": q(3)}, 301, T)
    await store.release("c", ["k"], 302, T)  # cut off mid-request: 4 may be on the channel
    assert await store.claim("c", 302, 10) == [ItemValue("k", q(3))]


async def test_a_claim_put_back_unsent_changes_nothing(store: Store) -> None:
    await acknowledge(store, q(3), 100)
    await store.set_desired("c", {"k": q(4)}, 200, T)
    await store.claim("c", 300, 10)
    await store.set_desired("c", {"k": q(3)}, 301, T)
    await store.release("c", ["k"], 302, T, sent=False, not_before=310)
    assert await status(store) == "ok"  # 4 never left: the channel holds 3, as desired


async def test_a_value_changed_in_flight_is_pushed_next(store: Store) -> None:
    await store.set_desired("c", {"k": q(1)}, 100, T)
    await store.claim("c", 102, 10)
    await store.set_desired("c", {"k": q(2)}, 101, T)
    settled = await store.settle(
        "c", [Verdict("k", q(1), Outcome.ACKNOWLEDGED)], 103, T, no_backoff
    )
    assert settled.propagated == []
    assert await store.claim("c", 200, 10) == [ItemValue("k", q(2))]
    settled = await store.settle(
        "c", [Verdict("k", q(2), Outcome.ACKNOWLEDGED)], 201, T, no_backoff
    )
    assert settled.propagated == [101]
    assert await store.oldest_pending() == {}


async def test_rejections_park_until_the_value_changes(store: Store) -> None:
    await store.set_desired("c", {"k": q(1)}, 100, T)
    await store.claim("c", 102, 10)
    verdict = Verdict("k", q(1), Outcome.REJECTED, "unknown upc")
    await store.settle("c", [verdict], 103, T, no_backoff)
    assert await store.claim("c", 1000, 10) == []
    (row,) = await store.items("c")
    assert row.status == "rejected" and row.last_error == "unknown upc"
    assert await store.set_desired("c", {"k": q(5)}, 104, T) == 1


async def test_retries_wait_their_time_and_survive_a_restart(store: Store, reopen: Opener) -> None:
    await store.set_desired("c", {"k": q(1)}, 100, T)
    await store.claim("c", 102, 10)
    settled = await store.settle(
        "c", [Verdict("k", q(1), Outcome.RETRY, "503")], 103, T, no_backoff
    )
    assert settled.attempts == {"k": 1}
    assert await store.next_due("c") == 110
    await store.claim("c", 110, 10)
    retry_after = Verdict("k", q(1), Outcome.RETRY, "429", retry_after=30)
    await store.settle("c", [retry_after], 111, T, no_backoff)
    await store.close()
    restarted = await reopen()
    try:
        assert await restarted.next_due("c") == 141
        assert await restarted.claim("c", 140, 10) == []
        assert await restarted.oldest_pending() == {"c": 100}
    finally:
        await restarted.close()


async def test_back_to_the_acknowledged_value_needs_no_push(store: Store) -> None:
    await acknowledge(store, q(1), 100)
    await store.set_desired("c", {"k": q(2)}, 200, T)
    assert await store.set_desired("c", {"k": q(1)}, 201, T) == 0
    assert await status(store) == "ok"
    assert await store.next_due("c") is None


async def test_a_resync_goes_behind_fresh_changes(store: Store) -> None:
    await acknowledge(store, q(1), 100, key="old")
    assert await store.force_all(200) == 1
    await store.set_desired("c", {"new": q(7)}, 200, Timing(0, 0))
    claimed = await store.claim("c", 300, 1)
    assert claimed == [ItemValue("new", q(7))]
    assert await store.claim("c", 300, 1) == [ItemValue("old", q(1))]


async def test_flush_makes_debounced_items_due_but_keeps_retry_times(store: Store) -> None:
    await store.set_desired("c", {"a": q(1), "b": q(1)}, 100, T)
    await store.claim("c", 102, 1)  # a
    await store.settle("c", [Verdict("a", q(1), Outcome.RETRY, "503")], 102, T, no_backoff)
    await store.set_desired("c", {"b": q(2)}, 103, T)  # b due at 105
    await store.flush("c", 104)
    assert await store.claim("c", 104, 10) == [ItemValue("b", q(2))]
    assert await store.next_due("c") == 109  # a still waits for its retry


async def test_the_guard_holds_zeroes_and_nothing_sends_them(store: Store, reopen: Opener) -> None:
    await acknowledge(store, q(4), 100)
    guard = ScanGuard(scan=5, allowed={"c": 0})
    await store.set_desired("c", {"k": q(0)}, 200, T, guard)
    assert guard.held["c"] == 1
    assert await status(store) == "held"
    assert await store.claim("c", 1000, 10) == []
    await store.close()
    store = await reopen()
    try:
        assert await store.recover(1000) == 0
        assert await store.claim("c", 1000, 10) == []
        assert await store.release_held("other", 1000) == {}  # another channel's hold
        assert await store.release_held("c", 1000) == {"c": 1}
        assert await store.claim("c", 1000, 10) == [ItemValue("k", q(0))]
    finally:
        await store.close()


async def test_a_release_by_an_operator_is_in_the_history_per_item(store: Store) -> None:
    shares = [(sku, Contribution(key, Decimal(4), None)) for sku, key in (("A", "a"), ("B", "b"))]
    await store.replace_shares("c", ["A", "B"], shares)
    await acknowledge(store, q(4), 100, key="a")
    await acknowledge(store, q(4), 100, key="b")
    await store.set_desired("c", {"a": q(0), "b": q(0)}, 200, T, ScanGuard(5, {"c": 0}))
    assert await store.release_held(None, 300, by="guard release by ops") == {"c": 2}
    rows = [(r.key, r.before, r.after, r.outcome, r.error) for r in await store.history("B")]
    assert rows[-1] == ("b", q(4), q(0), "released", "guard release by ops")
    assert {i.key for i in await store.claim("c", 300, 10)} == {"a", "b"}
    assert await store.release_held(None, 400, by="again") == {}


async def test_a_push_with_mixed_outcomes_is_in_the_history_with_befores_and_notes(
    store: Store,
) -> None:
    """SQLite writes acknowledged items' rows in SQL and the others' by the lifecycle: each row
    has its value before, and a note that comes with an acknowledgement is kept."""
    shares = [(sku, Contribution(key, Decimal(4), None)) for sku, key in (("A", "a"), ("B", "b"))]
    await store.replace_shares("c", ["A", "B"], shares)
    await acknowledge(store, q(4), 100, key="a")
    await store.set_desired("c", {"a": q(5), "b": q(2)}, 200, T)
    assert {i.key for i in await store.claim("c", 300, 10)} == {"a", "b"}
    verdicts = [Verdict("a", q(5), Outcome.ACKNOWLEDGED), Verdict("b", q(2), Outcome.RETRY, "busy")]
    await store.settle("c", verdicts, 300, T, no_backoff)
    a = [(r.before, r.after, r.outcome, r.error) for r in await store.history("A")]
    assert a[-1] == (q(4), q(5), "ok", None)
    b = [(r.before, r.after, r.outcome, r.error) for r in await store.history("B")]
    assert b[-1] == (None, q(2), "retry", "busy")
    assert [i.key for i in await store.claim("c", 400, 10)] == ["b"]
    noted = [Verdict("b", q(2), Outcome.ACKNOWLEDGED, "applied, rounded")]
    await store.settle("c", noted, 400, T, no_backoff)
    b = [(r.before, r.after, r.outcome, r.error) for r in await store.history("B")]
    assert b[-1] == (None, q(2), "ok", "applied, rounded")
    assert await status(store, "b") == "ok"


async def test_a_zero_held_while_its_item_is_in_flight_lands_in_held(store: Store) -> None:
    """Issue 7, case 2: a queued or in-flight item must not carry a held zero out."""
    await acknowledge(store, q(4), 100)
    await store.set_desired("c", {"k": q(6)}, 200, T)
    await store.claim("c", 300, 10)
    await store.set_desired("c", {"k": q(0)}, 301, T, ScanGuard(scan=5, allowed={"c": 0}))
    retry = Verdict("k", q(6), Outcome.RETRY, "503")
    await store.settle("c", [retry], 302, T, no_backoff)
    assert await status(store) == "held"
    assert await store.claim("c", 1000, 10) == []


async def test_keycrm_right_again_ends_a_hold(store: Store) -> None:
    await acknowledge(store, q(4), 100)
    await store.set_desired("c", {"k": q(0)}, 200, T, ScanGuard(scan=5, allowed={"c": 0}))
    await store.set_desired("c", {"k": q(4)}, 300, T)
    assert await status(store) == "ok"


async def test_a_resync_keeps_held_zeroes_held(store: Store) -> None:
    """Issue 17: a resync is no evidence that a mass change is right; the release is."""
    await acknowledge(store, q(4), 100)
    await store.set_desired("c", {"k": q(0)}, 200, T, ScanGuard(scan=5, allowed={"c": 0}))
    await store.force_all(300)
    assert await store.claim("c", 300, 10) == []
    assert await status(store) == "held"
    await store.release_held("c", 400)
    assert await store.claim("c", 400, 10) == [ItemValue("k", q(0))]


async def test_history_follows_a_sku_through_its_keys(store: Store) -> None:
    await store.replace_shares("c", ["A"], [("A", Contribution("name", Decimal(2), None))])
    await acknowledge(store, q(2), 100, key="name")
    (row,) = await store.history("A")
    assert (row.channel, row.key, row.before, row.after, row.outcome) == (
        "c",
        "name",
        None,
        q(2),
        "ok",
    )
    assert await store.history("B") == []
    assert await store.prune_history(200) == 1


async def test_counts_and_lag_see_in_flight_items(store: Store) -> None:
    await store.set_desired("c", {"a": q(1), "b": q(2)}, 100, T)
    await store.claim("c", 102, 1)
    assert (await store.counts())["c"] == {"pending": 1, "sending": 1}
    assert await store.oldest_pending() == {"c": 100}


async def test_counts_stay_true_through_any_sequence_of_moves(store: Store) -> None:
    """`counts` and `positive_acked` are kept, not recounted: after a random walk through the
    lifecycle they still equal what the items say."""
    import random

    rng = random.Random(7)
    keys = [f"k{n}" for n in range(30)]
    now = 100.0
    for step in range(300):
        now += 1
        move = rng.random()
        if move < 0.4:
            chosen = rng.sample(keys, rng.randint(1, 6))
            guard = ScanGuard(scan=step, allowed={"c": rng.randint(0, 3)})
            values = {k: q(rng.choice([0, 0, 1, 5, 9])) for k in chosen}
            await store.set_desired("c", values, now, T, guard if rng.random() < 0.3 else None)
        elif move < 0.7:
            for item in await store.claim("c", now + 100, rng.randint(1, 5)):
                outcome = rng.choice(list(Outcome))
                verdict = Verdict(item.key, item.value, outcome, "e")
                await store.settle("c", [verdict], now, T, no_backoff)
        elif move < 0.8:
            claimed = await store.claim("c", now + 100, 3)
            await store.release("c", [i.key for i in claimed], now, T, sent=rng.random() < 0.5)
        elif move < 0.9:
            await store.release_held(rng.choice(["c", None]), now, by=rng.choice([None, "x"]))
        elif move < 0.95:
            await store.force_all(now)
        else:
            await store.recover(now)
    rows = await store.items("c")
    expected: dict[str, int] = {}
    for row in rows:
        expected[row.status] = expected.get(row.status, 0) + 1
    assert (await store.counts())["c"] == expected
    in_stock = sum(1 for row in rows if row.acked is not None and row.acked.is_positive)
    assert (await store.positive_acked()).get("c", 0) == in_stock
    assert in_stock > 0 and len(expected) >= 3  # the walk went somewhere


async def test_history_keeps_a_bounded_trail_per_item(store: Store) -> None:
    store.history_per_item = 3
    await store.replace_shares("c", ["A"], [("A", Contribution("k", Decimal(2), None))])
    for n in range(6):
        await store.set_desired("c", {"k": q(n + 1)}, 100 + n, T)
        await store.claim("c", 1000 + n, 10)
        verdict = Verdict("k", q(n + 1), Outcome.ACKNOWLEDGED)
        await store.settle("c", [verdict], 200 + n, T, no_backoff)
    rows = await store.history("A")
    assert [row.after for row in rows] == [q(4), q(5), q(6)]
    assert await store.prune_history(204) == 1
