"""Requests go out full: look-ups gather webhook SKUs, batching channels gather due items."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest
from prometheus_client import CollectorRegistry

from daemon.core.models import ItemValue
from daemon.core.telemetry import Metrics
from daemon.send.dispatch import Dispatcher
from daemon.shell.daemon import Daemon
from daemon.store import SQLiteStore, Timing
from tests.adapters.harness import HARNESSES
from tests.adapters.test_contract import Rig, rig  # noqa: F401 (the fixture, parametrised below)
from tests.conftest import World, eventually, idle, running
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


async def test_look_ups_gather_a_stream_of_webhooks(world: World) -> None:
    world.keycrm.populate(60)
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)  # lookup_window 250ms by default
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        asked = len(world.keycrm.requests)
        for offer in world.keycrm.offers.values():  # one webhook per SKU, 200 a second
            offer.stock = {1: (1.0, 0.0)}
            await daemon.webhook("default", [offer.sku or ""])
            await anyio.sleep(0.005)
        await eventually(lambda: in_sync(world) and idle(daemon))
    lookups = [q for _, _, q in world.keycrm.requests[asked:] if "filter[offers_sku]" in q]
    per_request = sum(len(q["filter[offers_sku]"].split(",")) for q in lookups) / len(lookups)
    assert per_request >= 10, f"{len(lookups)} look-ups for 60 SKUs"


@pytest.mark.parametrize(
    "rig",
    [h for h in HARNESSES if h.id in ("marketplacer-graphql", "ordergroove")],
    ids=lambda h: h.id,
    indirect=True,
)
async def test_a_batching_channel_gathers_items_that_come_due_one_by_one(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    timing = Timing(0.0, 0.0)
    config = SimpleNamespace(
        name="c", type=rig.harness.type, rate=1000.0, concurrency=1, batch_size=100, timeout=5.0
    )
    metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", ["c"])
    dispatcher = Dispatcher(config, rig.channel, store, timing, metrics, batch_window=0.2)  # type: ignore[arg-type]
    items = rig.harness.items
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        for item in items:  # due one after another, 20 ms apart
            await store.set_desired("c", {item.key: item.value}, time.time(), timing)
            dispatcher.notify()
            await anyio.sleep(0.02)

        async def settled() -> bool:
            per = (await store.counts()).get("c", {})
            return per.get("ok", 0) == len(items)

        await eventually(settled)
        group.cancel_scope.cancel()
    requests = metrics.registry.get_sample_value(
        "stocksync_push_requests_total", {"merchant": "default", "channel": "c", "outcome": "ok"}
    )
    assert requests == 1, f"{requests} requests for {len(items)} items"
    await store.close()


@pytest.mark.parametrize(
    "rig", [h for h in HARNESSES if h.id == "inventory_api"], ids=lambda h: h.id, indirect=True
)
async def test_a_dispatcher_that_may_not_push_sends_nothing(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A replica whose lease ran out on its own clock (`may_push` false) puts claimed items
    back unsent, even ones already waiting for their turn."""
    store = SQLiteStore(tmp_path / "state.db")
    timing = Timing(0.0, 0.0)
    config = SimpleNamespace(
        name="c", type=rig.harness.type, rate=1000.0, concurrency=4, batch_size=1, timeout=5.0
    )
    metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", ["c"])
    leading = [False]
    dispatcher = Dispatcher(
        config,  # type: ignore[arg-type]
        rig.channel,
        store,
        timing,
        metrics,
        may_push=lambda: leading[0],
    )
    items = rig.harness.items
    await store.set_desired("c", {i.key: i.value for i in items}, time.time(), timing)
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        dispatcher.notify()
        await anyio.sleep(0.3)
        assert all(rig.harness.held(rig.fake, i) is None for i in items)
        counts = (await store.counts())["c"]
        assert counts.get("pending", 0) + counts.get("sending", 0) == len(items)
        leading[0] = True  # leading again (a new lease): now they go
        dispatcher.notify()

        async def settled() -> bool:
            return (await store.counts())["c"].get("ok", 0) == len(items)

        await eventually(settled)
        group.cancel_scope.cancel()
    await store.close()


class _CountedClaims(SQLiteStore):
    """The real store, noting each claim's limit and what it returned."""

    claims: list[tuple[int, int]]

    async def claim(self, channel: str, now: float, limit: int) -> list[ItemValue]:
        items = await super().claim(channel, now, limit)
        self.claims.append((limit, len(items)))
        return items


@pytest.mark.parametrize(
    "rig", [h for h in HARNESSES if h.id == "marketplacer-graphql"], ids=lambda h: h.id,
    indirect=True,
)  # fmt: skip
async def test_one_claim_fills_every_free_request_slot(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Claims go one at a time: a claim per batch capped a channel at a batch per store round
    trip, whatever its concurrency. Every slot free at a claim is filled by it, still one
    request per slot and `batch_size` items per request."""
    store = _CountedClaims(tmp_path / "state.db")
    store.claims = []
    timing = Timing(0.0, 0.0)
    items = rig.harness.items  # three: two requests of up to two
    size = 2
    config = SimpleNamespace(
        name="c", type=rig.harness.type, rate=1000.0, concurrency=2, batch_size=size, timeout=5.0
    )
    metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", ["c"])
    dispatcher = Dispatcher(config, rig.channel, store, timing, metrics)  # type: ignore[arg-type]
    await store.set_desired("c", {i.key: i.value for i in items}, time.time(), timing)
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        dispatcher.notify()

        async def settled() -> bool:
            return (await store.counts())["c"].get("ok", 0) == len(items)

        await eventually(settled)
        group.cancel_scope.cancel()
    await store.close()
    assert store.claims[0] == (2 * size, len(items)), store.claims
    requests = metrics.registry.get_sample_value(
        "stocksync_push_requests_total", {"merchant": "default", "channel": "c", "outcome": "ok"}
    )
    assert requests == -(-len(items) // size), f"{requests} requests of up to {size} items"
