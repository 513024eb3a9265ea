"""A batch with one item the channel chokes on: the poison ends rejected, its neighbours land.

Run for every adapter that batches, through the real dispatcher and store against the adapter's
fake, which refuses a poisoned request the way its API does (Marketplacer GraphQL: a path-less
variable error for the whole document; Ordergroove: 400 for the whole batch; Marketplacer REST:
422 for that variant's request).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from adapters import ADAPTERS
from daemon.dispatch import Dispatcher
from daemon.models import ItemValue
from daemon.store import SQLiteStore, Timing
from daemon.telemetry import Metrics
from tests.adapters.harness import HARNESSES
from tests.adapters.test_contract import Rig, rig  # noqa: F401 (the fixture, parametrised below)
from tests.conftest import eventually

pytestmark = pytest.mark.anyio

POISON: dict[str, Callable[[Any, ItemValue], None]] = {
    "marketplacer-graphql": lambda fake, item: fake.poison.add(item.key),
    "marketplacer-rest": lambda fake, item: fake.poison.add(item.parts[0]),
    "ordergroove": lambda fake, item: fake.poison.add(item.key),
}


def test_every_batching_adapter_has_a_poison_case() -> None:
    batching = {h.id for h in HARNESSES if ADAPTERS[h.type].max_batch > 1}
    assert batching == set(POISON)


@pytest.mark.parametrize(
    "rig", [h for h in HARNESSES if h.id in POISON], ids=lambda h: h.id, indirect=True
)
async def test_one_poison_item_does_not_hold_its_batch_back(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    poison = POISON[rig.harness.id]
    items = rig.harness.items
    bad = items[1]
    poison(rig.fake, bad)
    store = SQLiteStore(tmp_path / "state.db")
    timing = Timing(0.0, 0.0)
    config = SimpleNamespace(
        name="contract",
        type=rig.harness.type,
        rate=1000.0,
        concurrency=1,
        batch_size=100,
        timeout=5.0,
    )
    metrics = Metrics(CollectorRegistry(), ["contract"], "test")
    dispatcher = Dispatcher(config, rig.channel, store, timing, metrics)  # type: ignore[arg-type]
    await store.set_desired("contract", {i.key: i.value for i in items}, time.time(), timing)

    async def settled() -> bool:
        per = (await store.counts()).get("contract", {})
        return per.get("pending", 0) + per.get("sending", 0) == 0

    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        dispatcher.notify()
        await eventually(settled)
        group.cancel_scope.cancel()
    rows = {row.key: row for row in await store.items("contract")}
    assert rows[bad.key].status == "rejected"
    assert all(rows[i.key].status == "ok" for i in items if i is not bad)
    assert all(rig.harness.held(rig.fake, i) == i.value for i in items if i is not bad)
    split = metrics.registry.get_sample_value(
        "stocksync_push_requests_total", {"channel": "contract", "outcome": "rejected"}
    )
    assert split is not None
    await store.close()
