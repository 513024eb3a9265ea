"""The state store's reconciling rules, on a real SQLite file."""

from decimal import Decimal
from pathlib import Path

import pytest

from daemon.models import Outcome, StockLevel, Value
from daemon.store import SQLiteStore, Verdict

pytestmark = pytest.mark.anyio


def no_backoff(_attempt: int) -> float:
    return 7.0


def level(sku: str, quantity: int) -> StockLevel:
    return StockLevel(sku, 1, Decimal(quantity), Decimal(0), Decimal("9.5"))


async def test_records_report_only_real_changes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    assert [r.sku for r in await store.save_stock([level("A", 1), level("B", 2)], 1)] == ["A", "B"]
    assert [r.sku for r in await store.save_stock([level("A", 1), level("B", 3)], 2)] == ["B"]
    assert await store.save_stock([level("A", 1), level("B", 3)], 3) == []
    await store.close()


async def test_value_changed_in_flight_is_pushed_again(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    (p,) = await store.set_desired("c", {"k": Value(quantity=1)}, now=100)
    assert p.diverged_at == 100
    await store.set_desired("c", {"k": Value(quantity=2)}, now=101)  # while 1 is in flight
    settled = await store.settle(
        "c", [Verdict("k", Value(quantity=1), Outcome.ACKNOWLEDGED)], 102, no_backoff
    )
    assert [s.key for s in settled.still] == ["k"]
    (row,) = await store.items("c")
    assert (
        row.status == "pending"
        and row.acked == Value(quantity=1)
        and row.desired == Value(quantity=2)
    )
    settled = await store.settle(
        "c", [Verdict("k", Value(quantity=2), Outcome.ACKNOWLEDGED)], 103, no_backoff
    )
    assert settled.still == [] and settled.propagated == [101]
    assert await store.oldest_pending() == {}
    await store.close()


async def test_rejections_park_until_the_value_changes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.set_desired("c", {"k": Value(quantity=1)}, now=100)
    await store.settle(
        "c", [Verdict("k", Value(quantity=1), Outcome.REJECTED, "unknown upc")], 101, no_backoff
    )
    assert await store.pending() == []
    (row,) = await store.items("c")
    assert row.status == "rejected" and row.last_error == "unknown upc"
    assert len(await store.set_desired("c", {"k": Value(quantity=5)}, now=102)) == 1
    await store.close()


async def test_retries_are_scheduled_and_survive_a_restart(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.set_desired("c", {"k": Value(quantity=1)}, now=100)
    settled = await store.settle(
        "c", [Verdict("k", Value(quantity=1), Outcome.RETRY, "503")], 101, no_backoff
    )
    assert settled.still[0].next_attempt == 108
    retry_after = await store.settle(
        "c",
        [Verdict("k", Value(quantity=1), Outcome.RETRY, "429", retry_after=30)],
        102,
        no_backoff,
    )
    assert retry_after.still[0].next_attempt == 132
    await store.close()
    reopened = SQLiteStore(tmp_path / "s.db")
    (pending,) = await reopened.pending()
    assert (pending.key, pending.diverged_at, pending.next_attempt) == ("k", 100, 132)
    assert await reopened.oldest_pending() == {"c": 100}
    await reopened.close()


async def test_going_back_to_the_acknowledged_value_needs_no_push(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.set_desired("c", {"k": Value(quantity=1)}, now=100)
    await store.settle(
        "c", [Verdict("k", Value(quantity=1), Outcome.ACKNOWLEDGED)], 101, no_backoff
    )
    await store.set_desired("c", {"k": Value(quantity=2)}, now=102)
    assert await store.set_desired("c", {"k": Value(quantity=1)}, now=103) == []
    assert await store.pending() == []
    forced = await store.force_all(104)
    assert [(p.key, p.fresh) for p in forced] == [("k", False)]
    await store.close()


async def test_history_follows_a_sku_through_its_keys(tmp_path: Path) -> None:
    from daemon.plan import Contribution

    store = SQLiteStore(tmp_path / "s.db")
    await store.replace_shares("c", ["A"], [("A", Contribution("name", Decimal(2), None))])
    await store.set_desired("c", {"name": Value(quantity=2)}, now=100)
    await store.settle(
        "c", [Verdict("name", Value(quantity=2), Outcome.ACKNOWLEDGED)], 101, no_backoff
    )
    (row,) = await store.history("A")
    assert (row.channel, row.key, row.before, row.after, row.outcome) == (
        "c",
        "name",
        None,
        Value(quantity=2),
        "ok",
    )
    assert await store.history("B") == []
    assert await store.prune_history(200) == 1
    await store.close()


async def test_records_page_in_sku_order(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.save_stock([level(f"S{n:03d}", n) for n in range(7)], 1)
    first = await store.records("", 3)
    second = await store.records(first[-1].sku, 3)
    third = await store.records(second[-1].sku, 3)
    assert [r.sku for r in first + second + third] == [f"S{n:03d}" for n in range(7)]
    assert await store.records(third[-1].sku, 3) == []
    await store.close()
