"""A plan is made from the newest stored record, whatever order the plans run in.

A re-plan (every start after a kill), a scan page and a webhook look-up plan side by side. A
plan made from a record read before a newer one was stored must not land after the newer
plan: the next scan finds the stored record unchanged, so nothing would ever correct it (the
PostgreSQL crash suite found this as channels left at old values with every item `ok`).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from adapters import ADAPTERS
from daemon.config.settings import load_config
from daemon.core.models import StockLevel
from daemon.core.telemetry import Metrics
from daemon.reconcile.reconciler import Reconciler
from daemon.rules.plan import Contribution
from daemon.store import Store, Timing
from tests.conftest import eventually

pytestmark = pytest.mark.anyio

CONFIG = """
[keycrm]
api_key_env = "T_KEY"

[[channel]]
name = "shop"
type = "klump"
secret_key_env = "T_KEY"
key = "{sku}"
"""


class GatedShares:
    """The store, but the first `replace_shares` after `arm()` waits until `release()`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.armed = False
        self.reached = anyio.Event()
        self._gate = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def replace_shares(
        self, channel: str, skus: list[str], shares: list[tuple[str, Contribution]]
    ) -> dict[str, list[Contribution]]:
        if self.armed:
            self.armed = False
            self.reached.set()
            await self._gate.wait()
        return await self._store.replace_shares(channel, skus, shares)

    def release(self) -> None:
        self._gate.set()


def level(quantity: int) -> StockLevel:
    return StockLevel("S1", 1, Decimal(quantity), Decimal(0), Decimal("9.5"))


@pytest.fixture
def reconciler_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("T_KEY", "secret-key-value")
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    config = load_config(path, ADAPTERS)

    def make(store: Store) -> Reconciler:
        metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", ["shop"])
        timing = {"shop": Timing(debounce=0.0, max_delay=30.0)}
        return Reconciler(store, config.channels, metrics, timing=timing, wake=lambda _: None)

    return make


async def desired(store: Store) -> int | None:
    (item,) = await store.items("shop")
    return item.desired.quantity


async def test_a_replan_beside_a_newer_record_leaves_the_newer_plan(
    store: Store, reconciler_for: Any
) -> None:
    gated = GatedShares(store)
    reconciler: Reconciler = reconciler_for(gated)
    await reconciler.ingest(await store.save_stock([level(5)], 1))
    gated.armed = True
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reconciler.replan)
        await gated.reached.wait()  # the re-plan read S1 = 5 and is about to plan it
        newer = await store.save_stock([level(9)], None)  # a look-up stores S1 = 9...
        done = anyio.Event()

        async def look_up() -> None:
            await reconciler.ingest(newer)
            done.set()

        tasks.start_soon(look_up)  # ... and plans it: at once, or after the re-plan's page
        planning = getattr(reconciler, "_planning", None)  # where the look-up waits, if it must
        await eventually(
            lambda: done.is_set() or (planning and planning.statistics().tasks_waiting == 1)
        )
        gated.release()
    assert await desired(store) == 9


async def test_a_late_plan_of_an_older_read_plans_the_stored_record(
    store: Store, reconciler_for: Any
) -> None:
    """A scan page and a look-up saved S1 in one order and plan it in the other."""
    reconciler: Reconciler = reconciler_for(store)
    older = await store.save_stock([level(5)], 1)
    newer = await store.save_stock([level(9)], None)
    await reconciler.ingest(newer)
    await reconciler.ingest(older)
    assert await desired(store) == 9
    assert [r.stock.quantity for r in await store.records_of(["S1", "S1", "nope"])] == [9]
