"""Turns changed keyCRM records into desired values per channel and schedules the pushes.

This is the level-triggered heart of stocksync: events (a scan page, a webhook look-up, a resync)
only ever update desired values; whatever differs from what a channel acknowledged is work.

It also keeps the mass-change guard. A keyCRM glitch that returns zeros, or a wrong mapping, could
empty every channel in a minute. During a scan (or a re-plan after a config change), once more
than `guard_fraction` of a channel's in-stock items (and at least `GUARD_MIN_ITEMS`) have gone to
zero, further zeroes are held, not pushed; they go out when the next complete scan confirms them,
or when an operator resyncs. Zeroes from webhook look-ups are never held: a single sell-out must
reach channels at once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import structlog

from daemon.config import ChannelConfig
from daemon.dispatch import Dispatcher
from daemon.models import StockRecord
from daemon.plan import Contribution, combine, contributions
from daemon.store import Pending, Store
from daemon.telemetry import Metrics

__all__ = ["GUARD_MIN_ITEMS", "Reconciler"]

log = structlog.get_logger("stocksync.reconcile")

#: Below this many zeroes in one scan the guard never trips: small shops do sell out.
GUARD_MIN_ITEMS = 10


@dataclass(slots=True)
class _Guard:
    scan: int
    allowed: dict[str, int]
    zeroed: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)


class Reconciler:
    """Plans records for every channel and hands new work to the channel's dispatcher."""

    def __init__(
        self,
        store: Store,
        channels: Sequence[ChannelConfig],
        dispatchers: Mapping[str, Dispatcher],
        metrics: Metrics,
        *,
        guard_fraction: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._channels = channels
        self._dispatchers = dispatchers
        self._metrics = metrics
        self._guard_fraction = guard_fraction
        self._guard: _Guard | None = None
        self._clock = clock

    async def begin_scan(self, scan: int) -> None:
        """From now on, zeroes count against the guard of scan number `scan`."""
        baseline = await self._store.positive_acked()
        allowed = {
            c.name: max(GUARD_MIN_ITEMS, int(self._guard_fraction * baseline.get(c.name, 0)))
            for c in self._channels
        }
        self._guard = _Guard(scan, allowed)

    async def end_scan(self, scan: int, *, complete: bool) -> None:
        """A scan ended. If complete, zeroes held by earlier scans are confirmed: release them."""
        guard, self._guard = self._guard, None
        if guard is not None:
            for channel, count in guard.held.items():
                log.error(
                    "guard.zeroes_held",
                    channel=channel,
                    held=count,
                    allowed=guard.allowed[channel],
                    hint="released after the next complete scan confirms them, or by a resync",
                )
        if not complete:
            return
        released = await self._store.release_held(before_scan=scan)
        if released:
            log.warning("guard.zeroes_confirmed", items=len(released))
        self._touch(released)

    def _touch(self, pending: Sequence[Pending]) -> None:
        by_channel: dict[str, list[Pending]] = {}
        for item in pending:
            by_channel.setdefault(item.channel, []).append(item)
        for channel, items in by_channel.items():
            dispatcher = self._dispatchers.get(channel)
            if dispatcher is not None:
                dispatcher.touch(items)

    async def _guarded(self, channel: str, pending: list[Pending]) -> list[Pending]:
        """Pass what the guard allows; hold the rest."""
        guard = self._guard
        if guard is None:
            return pending
        passed: list[Pending] = []
        held: list[str] = []
        for item in pending:
            if not item.zeroing:
                passed.append(item)
            elif guard.zeroed[channel] < guard.allowed[channel]:
                guard.zeroed[channel] += 1
                passed.append(item)
            else:
                held.append(item.key)
        if held:
            await self._store.hold(channel, held, guard.scan)
            guard.held[channel] += len(held)
            self._metrics.guard_blocked.labels(channel=channel).inc(len(held))
        return passed

    async def replan(self, batch: int = 500) -> int:
        """Plan every stored record again: the rules may have changed (a reload, a new start)."""
        # A rule change (a wrong key template, a store code edited) can zero every item at once:
        # the re-plan answers to the guard like a scan. The next scan reads the same records and
        # cannot tell a wrong rule from a right one, so held zeroes wait for the scan after it:
        # one poll interval in which the guard's error and alert reach a person.
        own_guard = self._guard is None
        if own_guard:
            last = int(await self._store.get_meta("scan_generation") or 0)
            await self.begin_scan(last + 1)
        total = 0
        after = ""
        try:
            while records := await self._store.records(after, batch):
                total += await self.ingest(records)
                after = records[-1].sku
                await anyio.lowlevel.checkpoint()  # a million records must not freeze /healthz
        finally:
            if own_guard and self._guard is not None:
                await self.end_scan(self._guard.scan, complete=False)
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
                log.debug("plan.records_skipped", channel=channel.name, **dict(skipped))
            affected = await self._store.replace_shares(channel.name, skus, shares)
            values = {key: combine(group, channel.rules) for key, group in affected.items()}
            pending = await self._guarded(
                channel.name, await self._store.set_desired(channel.name, values, now)
            )
            total += len(pending)
            self._touch(pending)
        return total
