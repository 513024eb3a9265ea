"""The store contract of read-back and re-assertion, over every backend (see conftest.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from daemon.core.models import ItemValue, Outcome, Verdict
from daemon.rules.plan import Contribution
from daemon.store import Store
from tests.store.test_contract import T, acknowledge, no_backoff, q, status

pytestmark = pytest.mark.anyio


async def test_drift_pushes_the_desired_value_again_and_is_recorded(store: Store) -> None:
    await store.replace_shares("c", ["A"], [("A", Contribution("k", Decimal(5), None))])
    await acknowledge(store, q(5), 100)
    await store.set_desired("c", {"other": q(1)}, 100, T)
    assert await store.mark_drifted("c", [("k", q(5)), ("other", q(0))], 200) == []
    assert await store.mark_drifted("c", [("k", q(3))], 200) == ["k"]  # edited by hand
    assert await status(store) == "pending"
    claimed = await store.claim("c", 300, 10)
    assert ItemValue("k", q(5)) in claimed
    trail = await store.history("A")
    assert [(row.outcome, row.after) for row in trail][-1] == ("drift", q(3))


async def test_reassert_pushes_acknowledged_items_again_behind_other_work(store: Store) -> None:
    await acknowledge(store, q(1), 100, key="a")
    await acknowledge(store, q(2), 100, key="b")
    await store.set_desired("c", {"r": q(3)}, 100, T)
    (item,) = await store.claim("c", 200, 10)
    await store.settle("c", [Verdict("r", item.value, Outcome.REJECTED, "no")], 200, T, no_backoff)
    assert await store.reassert("c", 300) == 2
    await store.set_desired("c", {"fresh": q(9)}, 300, T)
    claimed = [i.key for i in await store.claim("c", 400, 10)]
    assert claimed[0] == "fresh" and sorted(claimed[1:]) == ["a", "b"]  # rejected stays parked


async def test_items_page_in_key_order(store: Store) -> None:
    await store.set_desired("c", {f"k{n}": q(n) for n in range(5)}, 100, T)
    await store.set_desired("d", {"k0": q(1)}, 100, T)
    first = await store.items_page("c", "", 2)
    rest = await store.items_page("c", first[-1].key, 10)
    assert [r.key for r in first + rest] == [f"k{n}" for n in range(5)]
    assert all(r.channel == "c" for r in first + rest)
