"""Turns changed keyCRM records into desired values per channel, and wakes the dispatchers.

This is the level-triggered heart of stocksync: events (a scan page, a webhook look-up, a resync)
only ever update desired values; whatever differs from what a channel may hold is work, queued in
the store. Each scan's mass-change guard (`daemon.rules.guard.ScanGuard`) is a value passed along
with that scan's records, and its verdict at the scan's end is `daemon.reconcile.holds`; look-ups
plan without one, so a sell-out is never held.

Plans are made one at a time, each from the records as stored when it runs, not as its caller
saw them: a re-plan, a scan page and a look-up run side by side, and a plan made from a record
that a newer one replaced meanwhile would otherwise overwrite the newer plan, and stay wrong,
since the next scan finds the stored record unchanged. Each save of a record is followed by a
plan of it, so the last plan to run for a SKU is always made from its newest record.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import anyio
import structlog

from daemon.config.settings import ChannelConfig
from daemon.core.models import StockRecord
from daemon.core.telemetry import MerchantMetrics
from daemon.reconcile.holds import Holds
from daemon.rules.guard import ScanGuard
from daemon.rules.plan import Contribution, combine, contributions
from daemon.store import Store, Timing

__all__ = ["Reconciler"]

log = structlog.get_logger("stocksync.reconcile")


class Reconciler:
    """Plans records for every channel; the store queues the work, `wake` tells the workers."""

    def __init__(
        self,
        store: Store,
        channels: Sequence[ChannelConfig],
        metrics: MerchantMetrics,
        *,
        timing: Mapping[str, Timing],
        wake: Callable[[str], None],
        guard_fraction: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._channels = channels
        self._metrics = metrics
        self._timing = timing
        self._wake = wake
        self._guard_fraction = guard_fraction
        self._clock = clock
        self._planning = anyio.Lock()  # one plan at a time (module docstring)
        self._passes = 0  # guarded passes (scans, re-plans, catalog passes) running now
        self.holds = Holds(store, [c.name for c in channels], metrics, wake=wake, clock=clock)

    async def begin_scan(self, scan: int) -> ScanGuard:
        """The guard of scan number `scan`: its baseline is what channels hold in stock now."""
        in_stock = await self._store.positive_acked()
        names = [c.name for c in self._channels]
        self._passes += 1
        return ScanGuard.for_scan(scan, names, in_stock, self._guard_fraction)

    async def end_scan(self, guard: ScanGuard, *, complete: bool) -> None:
        """A pass ended (`complete`: it saw everything it was to see): the guard's verdict
        (`daemon.reconcile.holds`). Held zeroes that are no mass change go out only once no other
        pass runs, since the verdict counts every held zero of the channel."""
        self._passes -= 1
        await self.holds.verdict(guard, final=complete and self._passes == 0)

    async def replan(self, batch: int = 500) -> int:
        """Plan every stored record again: the rules may have changed (a reload, a new start)."""
        # A rule change (a wrong key template, a store code edited) can zero every item at once:
        # the re-plan answers to a guard of its own, like a scan.
        last = int(await self._store.get_meta("scan_generation") or 0)
        guard = await self.begin_scan(last + 1)
        total = 0
        after = ""
        complete = False
        try:
            while True:
                async with self._planning:
                    records = await self._store.records(after, batch)
                    if not records:
                        break
                    total += await self._plan(records, guard)
                after = records[-1].sku
                await anyio.lowlevel.checkpoint()  # a million records must not freeze /healthz
            complete = True
        finally:
            await self.end_scan(guard, complete=complete)
        return total

    async def ingest(self, records: Sequence[StockRecord], guard: ScanGuard | None = None) -> int:
        """Plan changed records for every channel; return how many items now wait for a push.

        The records say which SKUs changed; their plans are made from what the store holds
        for them now (module docstring)."""
        if not records:
            return 0
        async with self._planning:
            return await self._plan(await self._store.records_of([r.sku for r in records]), guard)

    async def _plan(self, records: Sequence[StockRecord], guard: ScanGuard | None) -> int:
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
                log.debug("plan.records_skipped", channel=channel.name, **dict(skipped))
            affected = await self._store.replace_shares(channel.name, skus, shares)
            values = {key: combine(group, channel.rules) for key, group in affected.items()}
            waiting = await self._store.set_desired(
                channel.name, values, now, self._timing[channel.name], guard
            )
            if guard is not None:
                await self.holds.trip_early(guard, channel.name)
            if waiting:
                self._wake(channel.name)
            total += waiting
        return total
