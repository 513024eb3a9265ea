"""The shared keyCRM budget: a new leader inherits its predecessor's window from PostgreSQL."""

from __future__ import annotations

import time

import pytest

from daemon.keycrm.budget import Priority, RequestBudget
from daemon.store.pg import budget as shared
from daemon.store.pg.connect import Pool

pytestmark = pytest.mark.anyio


async def test_recent_requests_are_counted_per_merchant_and_old_ones_pruned(pool: Pool) -> None:
    async with pool.connection() as conn:
        await shared.record(conn, "acme", count=3)
        await shared.record(conn, "acme", count=2, ago=70)  # outside the window
        await shared.record(conn, "acme", ago=30)
        await shared.record(conn, "other", count=5)
        assert await shared.count_recent(conn, "acme") == 4
        assert await shared.count_recent(conn, "other") == 5
        ages = await shared.recent_ages(conn, "acme")
        assert len(ages) == 4 and ages == sorted(ages, reverse=True)
        assert 29 < ages[0] < 40 and all(age < 5 for age in ages[1:])
        assert await shared.prune(conn, "acme") == 2
        assert await shared.count_recent(conn, "acme", window=3600) == 4
        await shared.record(conn, "acme", ago=500)
        await shared.record(conn, "acme")  # recording prunes what is long gone
        assert await shared.count_recent(conn, "acme", window=3600) == 5


def test_a_preloaded_budget_counts_the_inherited_requests() -> None:
    now = [1000.0]
    budget = RequestBudget(limit=5, window=60.0, clock=lambda: now[0])
    budget.preload([50.0, 10.0, 5.0, 70.0, -1.0])  # 70 s ago is outside; a negative age is noise
    assert budget.sent_in_window() == 3
    now[0] += 15
    assert budget.sent_in_window() == 2


async def test_a_new_leader_cannot_overspend_its_predecessors_window(pool: Pool) -> None:
    limit, window = 4, 1.0
    async with pool.connection() as conn:  # the old leader used the whole window, just now
        await shared.record(conn, "acme", count=limit)
        ages = await shared.recent_ages(conn, "acme", window)
    budget = RequestBudget(limit=limit, window=window)
    budget.preload(ages)
    assert budget.sent_in_window() == limit
    started = time.monotonic()
    async with budget.request(Priority.LOOKUP):
        waited = time.monotonic() - started
    assert waited > 0.7  # until the predecessor's first request left keyCRM's window
