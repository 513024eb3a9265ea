"""The keyCRM budget: never more than N in any window, evenly spaced, look-ups first."""

import itertools
import time
from pathlib import Path

import anyio
import orjson
import pytest

from daemon.keycrm.budget import Priority, RequestBudget
from daemon.shell.upkeep import keep_budget
from daemon.store import SQLiteStore

pytestmark = pytest.mark.anyio


def max_in_window(times: list[float], window: float) -> int:
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


async def test_no_window_ever_holds_more_than_the_limit() -> None:
    budget = RequestBudget(limit=8, window=0.4)
    granted: list[float] = []

    async def worker(priority: Priority) -> None:
        for _ in range(6):
            async with budget.request(priority):
                granted.append(time.monotonic())

    async with anyio.create_task_group() as group:
        for priority in (Priority.SCAN, Priority.CATALOG, Priority.LOOKUP, Priority.SCAN):
            group.start_soon(worker, priority)
    assert len(granted) == 24
    assert max_in_window(granted, 0.4) <= 8
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert min(gaps) >= 0.05 * 0.9  # evenly paced: window / limit apart


async def test_lookups_go_before_the_order_feed_then_scans_then_catalog() -> None:
    budget = RequestBudget(limit=100, window=1.0)
    async with budget.request(Priority.SCAN):  # the next grant must wait its spacing
        pass
    order: list[str] = []

    async def ask(name: str, priority: Priority) -> None:
        async with budget.request(priority):
            order.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(ask, "catalog", Priority.CATALOG)
        group.start_soon(ask, "scan", Priority.SCAN)
        group.start_soon(ask, "orders", Priority.ORDERS)
        group.start_soon(ask, "lookup", Priority.LOOKUP)
    assert order == ["lookup", "orders", "scan", "catalog"]


async def test_a_pause_holds_everyone_and_cancelled_waiters_leave_the_queue() -> None:
    budget = RequestBudget(limit=100, window=1.0)
    budget.pause(0.2)
    with anyio.move_on_after(0.05):
        async with budget.request(Priority.LOOKUP):
            pytest.fail("granted during a pause")
    assert budget.waiting == 0
    started = time.monotonic()
    async with budget.request(Priority.SCAN):
        assert time.monotonic() - started >= 0.1


async def test_a_request_counts_from_its_answer_so_network_delay_cannot_crowd_a_window() -> None:
    budget = RequestBudget(limit=2, window=0.2)
    async with budget.request(Priority.SCAN):
        await anyio.sleep(0.15)  # a slow answer: keyCRM may have seen it late
        answered = time.monotonic()
    async with budget.request(Priority.SCAN):
        pass
    async with budget.request(Priority.SCAN):  # the third waits a window after the first answer
        assert time.monotonic() - answered >= 0.2 * 0.95


async def test_the_window_counts_requests_under_way_and_those_answered_within_it() -> None:
    """`sent_in_window` is kept as requests come and go (O(1) for /status and /metrics)."""
    now = [100.0]
    budget = RequestBudget(limit=5, window=10.0, clock=lambda: now[0])
    budget.restore({"done": [1000.0 - 8]}, wall_now=1000.0)  # answered 8 s ago
    budget.preload([3.0])  # another replica's, 3 s ago
    assert budget.sent_in_window() == 2
    async with budget.request(Priority.SCAN):
        assert budget.sent_in_window() == 3
        now[0] += 1.0
    now[0] += 1.5  # the restored one (answered at 92) has left the window
    assert budget.sent_in_window() == 2
    now[0] += 10.0
    assert budget.sent_in_window() == 0


async def test_an_idle_budget_is_saved_once_not_every_few_seconds(tmp_path: Path) -> None:
    """`keep_budget` writes a snapshot when it changed: an idle merchant's state is left alone."""
    store = SQLiteStore(tmp_path / "state.db")
    writes: list[str] = []
    original = store.set_meta

    async def counted(key: str, value: str) -> None:
        writes.append(value)
        await original(key, value)

    store.set_meta = counted  # type: ignore[method-assign]
    budget = RequestBudget(limit=100, window=60.0)
    async with anyio.create_task_group() as group:
        group.start_soon(keep_budget, store, budget, 0.005)
        await anyio.sleep(0.05)  # ~10 rounds, nothing asked
        assert len(writes) == 1
        async with budget.request(Priority.SCAN):
            pass
        with anyio.fail_after(2):
            while len(writes) < 2:
                await anyio.sleep(0.005)
        group.cancel_scope.cancel()
    await store.close()
    assert len(orjson.loads(writes[-1])["done"]) == 1
    assert len(orjson.loads(writes[0])["done"]) == 0
