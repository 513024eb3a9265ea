"""The event loop's lag: a loop frozen for 0.3 s shows as one tick 0.3 s late, a free one as
ticks on time."""

from __future__ import annotations

import time

import anyio
import pytest
from prometheus_client import CollectorRegistry

from daemon.core.telemetry import Metrics
from daemon.shell.looplag import watch_loop
from tests.conftest import eventually

pytestmark = pytest.mark.anyio


def sample(registry: CollectorRegistry, suffix: str, **labels: str) -> float:
    value = registry.get_sample_value(f"stocksync_event_loop_lag_seconds{suffix}", labels)
    return 0.0 if value is None else value


def late(registry: CollectorRegistry) -> float:
    """Ticks that ran over 0.25 s after they were due."""
    return sample(registry, "_count") - sample(registry, "_bucket", le="0.25")


async def test_a_frozen_loop_shows_as_a_late_tick() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, "test")
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: watch_loop(metrics.event_loop_lag, interval=0.02))
        await eventually(lambda: sample(registry, "_count") >= 5)
        before, waited = late(registry), sample(registry, "_sum")
        time.sleep(0.6)  # noqa: ASYNC251 - the blocking call a bug would make on the loop
        await eventually(lambda: late(registry) > before)
        assert sample(registry, "_sum") - waited >= 0.5
        group.cancel_scope.cancel()
