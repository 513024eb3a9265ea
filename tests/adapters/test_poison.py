"""A batch with one item the channel chokes on: the poison ends rejected, its neighbours land;
and a batch whose 2xx answer reports one item failed: it stays pending and is sent again (never
acknowledged), its neighbours land.

Run for every adapter that batches, through the real dispatcher and store against the adapter's
fake, which refuses a poisoned request the way its API does (Marketplacer GraphQL: a path-less
variable error for the whole document; Ordergroove: 400 for the whole batch; Marketplacer REST:
422 for that variant's request).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from adapters import ADAPTERS
from daemon.core.models import ItemValue
from daemon.core.telemetry import MerchantMetrics, Metrics
from daemon.send import dispatch
from daemon.send.dispatch import Dispatcher
from daemon.store import SQLiteStore, Timing
from tests.adapters.harness import HARNESSES
from tests.adapters.test_contract import Rig, rig  # noqa: F401 (the fixture, parametrised below)
from tests.conftest import eventually

pytestmark = pytest.mark.anyio

#: (make the fake fail this item inside a 2xx answer, make it recover), per batching channel
IN_BODY: dict[str, tuple[Callable[[Any, ItemValue], None], Callable[[Any], None]]] = {
    "marketplacer-graphql": (
        lambda fake, item: fake.failing.update({item.key: "row is locked"}),
        lambda fake: fake.failing.clear(),
    ),
    "marketplacer-rest": (
        lambda fake, item: fake.failing.update({item.parts[0]: "row is locked"}),
        lambda fake: fake.failing.clear(),
    ),
    "ordergroove": (
        lambda fake, item: fake.failing.add(item.key),
        lambda fake: fake.failing.clear(),
    ),
}

POISON: dict[str, Callable[[Any, ItemValue], None]] = {
    "marketplacer-graphql": lambda fake, item: fake.poison.add(item.key),
    "marketplacer-rest": lambda fake, item: fake.poison.add(item.parts[0]),
    "ordergroove": lambda fake, item: fake.poison.add(item.key),
}


def test_every_batching_adapter_has_a_poison_case_and_an_in_body_failure_case() -> None:
    batching = {h.id for h in HARNESSES if ADAPTERS[h.type].max_batch > 1}
    assert batching == set(POISON) == set(IN_BODY)


@asynccontextmanager
async def dispatching(
    built: Rig, tmp_path: Path
) -> AsyncIterator[tuple[SQLiteStore, MerchantMetrics]]:
    """The real dispatcher and store pushing the harness's items to the rig's fake."""
    store = SQLiteStore(tmp_path / "state.db")
    timing = Timing(0.0, 0.0)
    config = SimpleNamespace(
        name="contract",
        type=built.harness.type,
        rate=1000.0,
        concurrency=1,
        batch_size=100,
        timeout=5.0,
    )
    metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", ["contract"])
    dispatcher = Dispatcher(config, built.channel, store, timing, metrics)  # type: ignore[arg-type]
    items = built.harness.items
    await store.set_desired("contract", {i.key: i.value for i in items}, time.time(), timing)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(dispatcher.run)
            dispatcher.notify()
            yield store, metrics
            group.cancel_scope.cancel()
    finally:
        await store.close()


async def settled(store: SQLiteStore) -> bool:
    per = (await store.counts()).get("contract", {})
    return per.get("pending", 0) + per.get("sending", 0) == 0


def requests(metrics: MerchantMetrics, outcome: str) -> float:
    sample = metrics.registry.get_sample_value(
        "stocksync_push_requests_total",
        {"merchant": "default", "channel": "contract", "outcome": outcome},
    )
    return sample or 0.0


@pytest.mark.parametrize(
    "rig", [h for h in HARNESSES if h.id in POISON], ids=lambda h: h.id, indirect=True
)
async def test_one_poison_item_does_not_hold_its_batch_back(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    poison = POISON[rig.harness.id]
    items = rig.harness.items
    bad = items[1]
    poison(rig.fake, bad)
    async with dispatching(rig, tmp_path) as (store, metrics):
        await eventually(lambda: settled(store))
        rows = {row.key: row for row in await store.items("contract")}
    assert rows[bad.key].status == "rejected"
    assert all(rows[i.key].status == "ok" for i in items if i is not bad)
    assert all(rig.harness.held(rig.fake, i) == i.value for i in items if i is not bad)
    assert requests(metrics, "rejected") > 0


@pytest.mark.parametrize(
    "rig", [h for h in HARNESSES if h.id in IN_BODY], ids=lambda h: h.id, indirect=True
)
async def test_one_item_failed_inside_a_2xx_stays_pending_while_its_batch_lands(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "backoff_delay", lambda attempt: 0.05)
    fail, recover = IN_BODY[rig.harness.id]
    items = rig.harness.items
    bad = items[1]
    fail(rig.fake, bad)
    async with dispatching(rig, tmp_path) as (store, metrics):

        async def others_landed_and_bad_retried() -> bool:
            rows = {row.key: row for row in await store.items("contract")}
            others = all(rows[i.key].status == "ok" for i in items if i is not bad)
            return others and rows[bad.key].attempts >= 2

        await eventually(others_landed_and_bad_retried)
        rows = {row.key: row for row in await store.items("contract")}
        assert rows[bad.key].status in ("pending", "sending")
        assert rows[bad.key].acked is None
        assert rig.harness.held(rig.fake, bad) is None
        assert all(rig.harness.held(rig.fake, i) == i.value for i in items if i is not bad)
        assert requests(metrics, "retry") >= 2
        recover(rig.fake)
        await eventually(lambda: settled(store))
        rows = {row.key: row for row in await store.items("contract")}
    assert rows[bad.key].status == "ok"
    assert rig.harness.held(rig.fake, bad) == bad.value
