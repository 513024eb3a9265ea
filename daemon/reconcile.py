"""Turns changed keyCRM records into desired values per channel and schedules the pushes.

This is the level-triggered heart of stocksync: events (a scan page, a webhook look-up, a resync)
only ever update desired values; whatever differs from what a channel acknowledged is work.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import structlog

from daemon.config import ChannelConfig
from daemon.dispatch import Dispatcher
from daemon.models import StockRecord
from daemon.plan import Contribution, combine, contributions
from daemon.store import Store, iter_batches
from daemon.telemetry import Metrics

__all__ = ["Reconciler"]

log = structlog.get_logger("stocksync.reconcile")


class Reconciler:
    """Plans records for every channel and hands new work to the channel's dispatcher."""

    def __init__(
        self,
        store: Store,
        channels: Sequence[ChannelConfig],
        dispatchers: Mapping[str, Dispatcher],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._channels = channels
        self._dispatchers = dispatchers
        self._metrics = metrics
        self._clock = clock

    async def replan(self, batch: int = 500) -> int:
        """Plan every stored record again: the rules may have changed (a reload, a new start)."""
        total = 0
        for records in iter_batches(await self._store.records(), batch):
            total += await self.ingest(records)
        return total

    async def ingest(self, records: Sequence[StockRecord]) -> int:
        """Plan changed records for every channel; return how many items became pending."""
        if not records:
            return 0
        now = self._clock()
        skus = [record.sku for record in records]
        total = 0
        for channel in self._channels:
            shares: list[tuple[str, Contribution]] = []
            skipped: Counter[str] = Counter()
            for record in records:
                found, reason = contributions(record, channel.rules)
                if reason is not None:
                    skipped[reason] += 1
                shares.extend((record.sku, share) for share in found)
            for reason, count in skipped.items():
                self._metrics.records_skipped.labels(channel=channel.name, reason=reason).inc(count)
            if skipped:
                log.info("plan.records_skipped", channel=channel.name, **dict(skipped))
            affected = await self._store.replace_shares(channel.name, skus, shares)
            values = {key: combine(group, channel.rules) for key, group in affected.items()}
            pending = await self._store.set_desired(channel.name, values, now)
            total += len(pending)
            dispatcher = self._dispatchers.get(channel.name)
            if dispatcher is not None:
                dispatcher.touch(pending)
        return total
