"""Read-back in the daemon: find what channels changed behind stocksync's back, and heal it.

Where a channel can say what it holds (`Readable`), a `Verifier` walks its acknowledged items in
pages every `sync.verify_interval`, at most `sync.verify_share` of the channel's rate limit, and
only while no live change is due for that channel: live changes never wait for it. Its requests
also take slots from the channel's own pacing, so pushes and reads together keep the limit. An
item the channel holds something else for is drift: logged with before, live and desired, counted
(`stocksync_drift_items_total`), written to the history as `drift`, and pushed again. An item
the channel does not know is reported, never created.

A channel that cannot be read back gets a `Reasserter` instead when it sets `reassert_interval`:
its acknowledged values are pushed again on that schedule, behind everything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog
from aiolimiter import AsyncLimiter

from daemon.core.channel import Readable
from daemon.core.errors import ChannelFatal, StoreUnavailable
from daemon.core.telemetry import MerchantMetrics
from daemon.send.dispatch import Dispatcher
from daemon.send.readback import ChannelDrift, Drifted, check_batch
from daemon.store import Store

__all__ = ["Reasserter", "Verifier"]

log = structlog.get_logger("stocksync.verify")

_PAGE = 500
_QUIET_POLL = 1.0  # seconds between looks at the live backlog while it drains
_RETRY = 60.0


def _meta_key(kind: str, channel: str) -> str:
    return f"{kind}_done:{channel}"


async def _wait_until_due(store: Store, key: str, every: float, clock: Callable[[], float]) -> None:
    """Sleep until `every` after the last finished pass (kept in the store: restarts keep pace)."""
    try:
        last = await store.get_meta(key)
    except StoreUnavailable:
        last = None
    due = (float(last) if last else 0.0) + every
    await anyio.sleep(max(0.0, due - clock()))


class Verifier:
    """Reads one channel back on a schedule and heals drift."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        reader: Readable,
        store: Store,
        metrics: MerchantMetrics,
        *,
        every: float,
        share: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = dispatcher.name
        self._dispatcher = dispatcher
        self._reader = reader
        self._store = store
        self._metrics = metrics
        self._every = every
        self._rate = dispatcher.config.rate * share
        self._clock = clock
        self._log = log.bind(channel=self.name)
        metrics.verify_interval.labels(channel=self.name).set(every)

    async def run(self) -> None:
        """Pass after pass, until cancelled; a failed pass is tried again in a minute."""
        # Until a pass of this run completes, the gauge holds the run's start, whatever the
        # stored last pass says: a daemon that was down for a while does not start out stale,
        # it has two intervals (and two passes' cost) like a fresh one. The stored time still
        # sets when the first pass is due.
        self._metrics.verify_last_success.labels(channel=self.name).set(self._clock())
        while True:
            await _wait_until_due(
                self._store, _meta_key("verify", self.name), self._every, self._clock
            )
            try:
                await self.verify_once()
            except (StoreUnavailable, ChannelFatal) as exc:
                self._log.warning("verify.failed", error=str(exc))
                await anyio.sleep(_RETRY)

    def expected_seconds(self, items: int) -> float:
        """What a pass over this many acknowledged items costs at the read share: one request
        per read batch, at `verify_share` of the channel's rate (waits for live changes not
        counted). Published as `stocksync_verify_pass_expected_seconds`."""
        batch = max(1, self._reader.max_read_batch)
        return -(-items // batch) / self._rate

    def publish_expected(self, items: int) -> None:
        self._metrics.verify_expected.labels(channel=self.name).set(self.expected_seconds(items))

    async def _quiet(self) -> None:
        """Until the channel has no live change due: those go first."""
        while True:
            if not await self._store.count_due(self.name, self._clock(), 1):
                return
            await anyio.sleep(_QUIET_POLL)

    async def verify_once(self) -> ChannelDrift:
        """One pass over every acknowledged item; returns what it found."""
        found = ChannelDrift(self.name)
        limiter = AsyncLimiter(1, 1.0 / self._rate)
        batch = max(1, self._reader.max_read_batch)
        after = ""
        meanwhile = 0
        started = self._clock()
        self._metrics.verify_started.labels(channel=self.name).set(started)
        while page := await self._store.items_page(self.name, after, _PAGE):
            after = page[-1].key
            rows = [row for row in page if row.acked is not None and row.status == "ok"]
            for start in range(0, len(rows), batch):
                await self._quiet()
                chunk = rows[start : start + batch]
                drifted_before = len(found.drifted)
                await check_batch(self._reader, chunk, limiter, found, pace=self._dispatcher.pace)
                seen = found.drifted[drifted_before:]
                if seen:
                    # Only what the store confirms is drift, in the log as in the metric.
                    del found.drifted[drifted_before:]
                    confirmed = await self._heal(seen)
                    found.drifted.extend(confirmed)
                    meanwhile += len(seen) - len(confirmed)
        if found.missing:
            self._log.warning(
                "verify.items_missing",
                count=len(found.missing),
                keys=found.missing[:20],
                hint="the channel does not know these items; stocksync never creates them",
            )
        finished = self._clock()
        if not found.unreadable:
            await self._store.set_meta(_meta_key("verify", self.name), str(finished))
            self._metrics.verify_last_success.labels(channel=self.name).set(finished)
        self._log.info(
            "verify.finished",
            checked=found.checked,
            agree=found.agree,
            drifted=len(found.drifted),
            healed=len(found.drifted),
            changed_meanwhile=meanwhile,
            missing=len(found.missing),
            unreadable=len(found.unreadable),
            duration_ms=round((finished - started) * 1000),
        )
        return found

    async def _heal(self, seen: list[Drifted]) -> list[Drifted]:
        """Push again what read-back saw drift on, and return the items that are drift.

        Read-back compares the channel with rows read before the request went out; an item the
        daemon pushed meanwhile (the channel holds the new value, the row the old one) looks
        like drift but is not. The store decides, in the transaction that moves the item: only
        an item still `ok` with that acknowledgement is drift. That one answer feeds the
        metric, the `verify.drift` lines and the pass's `drifted` count alike.
        """
        live = [(item.key, item.live) for item in seen]
        moved = set(await self._store.mark_drifted(self.name, live, self._clock()))
        confirmed = [item for item in seen if item.key in moved]
        if not confirmed:
            return []
        self._metrics.drift_items.labels(channel=self.name).inc(len(confirmed))
        skus = await self._store.skus(self.name, [item.key for item in confirmed])
        for item in confirmed:
            self._log.warning(
                "verify.drift",
                key=item.key,
                sku=",".join(skus.get(item.key, [])) or None,
                before=item.acked.describe(),
                live=item.live.describe(),
                desired=item.desired.describe(),
            )
        self._dispatcher.notify()
        return confirmed


class Reasserter:
    """Pushes a channel's acknowledged values again on a schedule (no read-back possible)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        store: Store,
        *,
        every: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = dispatcher.name
        self._dispatcher = dispatcher
        self._store = store
        self._every = every
        self._clock = clock

    async def run(self) -> None:
        while True:
            key = _meta_key("reassert", self.name)
            await _wait_until_due(self._store, key, self._every, self._clock)
            try:
                moved = await self._store.reassert(self.name, self._clock())
                await self._store.set_meta(key, str(self._clock()))
            except StoreUnavailable:
                await anyio.sleep(_RETRY)
                continue
            self._dispatcher.notify()
            log.info("channel.reasserted", channel=self.name, items=moved)
