"""The order feed's poller against the fake keyCRM over real HTTP, with a recording queue.

What each poll queues, what it remembers, and what a malformed page or a tight budget do to it;
the daemon around it is `test_order_feed.py`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import anyio
import orjson
import pytest
from prometheus_client import CollectorRegistry

from daemon.core.errors import SourceRetryable
from daemon.core.merchant_metrics import MerchantMetrics
from daemon.core.telemetry import Metrics
from daemon.keycrm.budget import RequestBudget
from daemon.keycrm.client import KeycrmClient
from daemon.keycrm.feed import STATE_KEY, OrderFeed
from daemon.simulator import FakeKeycrm
from daemon.store import SQLiteStore, open_store
from tests.conftest import Serve
from tests.integration.test_keycrm_client import KEY, client_for, count

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake() -> FakeKeycrm:
    return FakeKeycrm(KEY)


@pytest.fixture
def metrics() -> MerchantMetrics:
    return Metrics(CollectorRegistry(), "test").for_merchant("default", [])


class Recorder:
    """The look-up queue as the feed sees it: every `enqueue` call, in order."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, skus: Sequence[str]) -> int:
        self.calls.append(list(skus))
        return 0

    @property
    def skus(self) -> list[str]:
        return [sku for call in self.calls for sku in call]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    state = open_store(tmp_path / "state.db")
    yield state
    await state.close()


def feed_for(
    client: KeycrmClient, store: SQLiteStore, queue: Recorder, metrics: MerchantMetrics
) -> OrderFeed:
    return OrderFeed(client, store, queue, metrics, interval=0.05, overlap=120.0)


async def test_an_order_seen_again_unchanged_queues_nothing_and_a_change_queues_it_again(
    fake: FakeKeycrm,
    serve: Serve,
    metrics: MerchantMetrics,
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.populate(4)
    offers = list(fake.offers.values())
    fake.orders.place([(offers[0], 1), (offers[1], 2)])
    queue = Recorder()
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch)
        feed = feed_for(client, store, queue, metrics)
        for _ in range(3):  # every poll reaches back over the order (the overlap)
            await feed.poll(time.time())
        assert queue.skus == ["SKU-00001", "SKU-00002"]
        fake.orders.touch(1, status_id=4)  # cancelled: its stock comes back
        await feed.poll(time.time())
        assert queue.skus == ["SKU-00001", "SKU-00002"] * 2
        # A new process (the same state) still knows the order: nothing queued again.
        again = feed_for(client, store, queue, metrics)
        await again._load()
        await again.poll(time.time())
    assert len(queue.calls) == 2
    assert (
        metrics.registry.get_sample_value(
            "stocksync_order_feed_orders_total", {"merchant": "default"}
        )
        == 2
    )
    assert (
        metrics.registry.get_sample_value(
            "stocksync_order_feed_skus_total", {"merchant": "default"}
        )
        == 4
    )
    saved = orjson.loads(await store.get_meta(STATE_KEY) or "{}")
    assert saved["watermark"] >= fake.orders.orders[1].updated_at
    asked = [q for _, path, q in fake.requests if path == "/v1/order"]
    assert all(q["include"] == "products.offer" and q["sort"] == "id" for q in asked)


async def test_a_malformed_page_is_counted_retried_and_never_half_applied(
    fake: FakeKeycrm,
    serve: Serve,
    metrics: MerchantMetrics,
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.populate(2)
    fake.orders.place([(fake.by_sku("SKU-00001"), 1)])
    good = fake.orders.row(fake.orders.orders[1], lines=True)
    bad = {**good, "id": 2, "products": [{"sku": "SKU-00002", "quantity": "lots"}]}
    page = {"data": [good, bad], "current_page": 1, "last_page": 1, "total": 2}
    fake.faults.add(0, body=orjson.dumps(page), times=6)  # every attempt of one poll
    queue = Recorder()
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch)
        feed = feed_for(client, store, queue, metrics)
        with pytest.raises(SourceRetryable):
            await feed.poll(time.time())
        assert queue.calls == []  # not even the good order of the page
        assert feed.progress.watermark is None
        assert await store.get_meta(STATE_KEY) is None
        assert count(metrics, "orders", "malformed") == 6
        await feed.poll(time.time())  # keyCRM answers properly again
    assert queue.skus == ["SKU-00001"]


async def test_the_feed_shares_the_budget_with_scans_and_lookups_and_keeps_its_limit(
    fake: FakeKeycrm,
    serve: Serve,
    metrics: MerchantMetrics,
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fake keyCRM answers 429 past 10 requests in 0.5 s: none may come, and the feed
    goes after look-ups and before the scan."""
    fake.populate(50 * 10)
    fake.limit, fake.window = 10, 0.5
    for index in range(60):  # two pages of orders
        fake.orders.place([(fake.by_sku(f"SKU-{index + 1:05d}"), 1)])
    budget = RequestBudget(10, window=0.5)
    queue = Recorder()
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch, budget=budget)
        feed = feed_for(client, store, queue, metrics)
        looked = anyio.Event()

        async def look() -> None:
            await client.lookup([f"SKU-{i:05d}" for i in range(1, 121)])
            looked.set()

        async with anyio.create_task_group() as group:
            group.start_soon(feed.run)
            group.start_soon(look)
            pages = [page async for page in client.scan()]
            await looked.wait()
            group.cancel_scope.cancel()
    assert len(pages) == 10
    assert fake.refused == 0
    times = [t for t, _, _ in fake.requests]
    assert max(sum(1 for t in times if s <= t < s + 0.5) for s in times) <= 10
    paths = [path for _, path, _ in fake.requests]
    assert paths.count("/v1/order") >= 4  # it polled all along (two pages a poll)
    assert len(set(queue.skus)) == 60


async def test_a_watermark_hours_old_is_caught_up_an_hour_a_poll_and_nothing_is_skipped(
    fake: FakeKeycrm,
    serve: Serve,
    metrics: MerchantMetrics,
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.populate(3)
    now = time.time()
    fake.orders.place([(fake.by_sku("SKU-00001"), 1)], at=now - 2.5 * 3600)
    fake.orders.place([(fake.by_sku("SKU-00002"), 1)], at=now - 10)
    queue = Recorder()
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch)
        feed = feed_for(client, store, queue, metrics)
        feed.progress.watermark = now - 3 * 3600
        behind = []
        for _ in range(4):
            await feed.poll(time.time())
            behind.append(feed.progress.behind)
    assert behind == [True, True, True, False]  # three hour-slices, then current
    assert queue.skus == ["SKU-00001", "SKU-00002"]
    assert feed.progress.watermark is not None and feed.progress.watermark >= now
