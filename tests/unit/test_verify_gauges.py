"""What `StocksyncVerifyStale` reads (issue 22): a restart starts fresh, a pass says when it
started and what it should cost at the channel's read share."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from daemon.core.telemetry import Metrics
from daemon.send.verify import Verifier

pytestmark = pytest.mark.anyio

NOW = 10_000.0
LABELS = {"merchant": "default", "channel": "og"}


class Store:
    """A state whose last pass ended long ago; the pass it starts never gets its first page."""

    def __init__(self) -> None:
        self.meta = {"verify_done:og": "1000.0"}

    async def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self.meta[key] = value

    async def items_page(self, channel: str, after: str, limit: int) -> list[Any]:
        await anyio.sleep_forever()
        return []


def verifier(metrics: Metrics, store: Store) -> Verifier:
    # Ordergroove reads one product a request; 10 requests a second, a fifth of it for reads.
    dispatcher = SimpleNamespace(name="og", config=SimpleNamespace(rate=10.0), pace=None)
    reader = SimpleNamespace(max_read_batch=1)
    view = metrics.for_merchant("default", ["og"])
    return Verifier(
        dispatcher,  # type: ignore[arg-type]
        reader,  # type: ignore[arg-type]
        store,  # type: ignore[arg-type]
        view,
        every=60.0,
        share=0.2,
        clock=lambda: NOW,
    )


def gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, LABELS)


async def test_a_restart_does_not_inherit_the_last_pass_age_and_passes_say_what_they_cost() -> None:
    metrics = Metrics(CollectorRegistry(), "test")
    store = Store()
    checker = verifier(metrics, store)
    async with anyio.create_task_group() as group:
        group.start_soon(checker.run)
        await anyio.wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    # The pass before the restart ended 9,000 s ago: the gauge starts at this run's start.
    assert gauge(metrics, "stocksync_verify_last_success_timestamp_seconds") == NOW
    assert gauge(metrics, "stocksync_verify_pass_started_timestamp_seconds") == NOW
    # 60 items, one a request at 2 requests a second: the 29.6 s pass of the issue.
    checker.publish_expected(60)
    assert gauge(metrics, "stocksync_verify_pass_expected_seconds") == 30.0
    assert checker.expected_seconds(0) == 0.0
