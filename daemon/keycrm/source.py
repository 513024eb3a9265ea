"""Drives keyCRM reads: the periodic full scan, the catalog refresh and webhook look-ups.

The scan is the safety net (it sees every SKU, one 50-offer page per request); look-ups carry fresh
changes ahead of it within the same budget. Each page is stored and planned as it arrives, so a scan
interrupted halfway has still done its share; but only a complete scan (see
`daemon.keycrm.completeness`) may vanish SKUs or let out the zeroes its guard held when they are no
mass change (`daemon.reconcile.holds`); a mass change waits for a person however many scans agree.
Look-ups are served first in, first out, from a bounded queue on disk (`daemon.keycrm.lookups`): a
flood of SKUs cannot starve the ones before it, and a SKU leaves the queue only once its answer is
stored.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import structlog

from daemon.core.errors import SourceError, SourceRetryable, StoreUnavailable
from daemon.core.models import StockLevel
from daemon.core.telemetry import MerchantMetrics
from daemon.keycrm.client import PAGE_SIZE, KeycrmClient
from daemon.keycrm.completeness import ScanTally
from daemon.keycrm.lookups import LookupQueue
from daemon.keycrm.payloads import Page
from daemon.reconcile.reconciler import Reconciler
from daemon.rules.guard import ScanGuard
from daemon.store import LookupEntry, PageMark, ScanPage, Store

__all__ = ["ScanProgress", "Source"]

log = structlog.get_logger("stocksync.source")

_FAILED_SCAN_RETRY = 60.0
_STORE_RETRY = 5.0
_FAILED_CATALOG_RETRY = 300.0
_LOOKUP_BATCH = PAGE_SIZE * 4


class IncompleteScan(SourceRetryable):
    """The scan's pages did not add up (`daemon.keycrm.completeness`): nothing vanishes; retry."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"incomplete scan ({reason}): {detail}", status="incomplete")
        self.reason = reason


@dataclass(slots=True)
class ScanProgress:
    """Where the current scan stands, for `/status`."""

    running: bool = False
    resync: bool = False
    page: int = 0
    last_page: int | None = None
    started_at: float | None = None
    scans_completed: int = 0
    last_success: float | None = None
    last_duration: float | None = None
    last_error: str | None = None
    catalog_at: float | None = None
    duplicates: dict[str, int] = field(default_factory=dict)
    catalog_running: bool = False
    catalog_page: int = 0
    catalog_last_page: int | None = None
    catalog_started_at: float | None = None

    @property
    def first_scan_done(self) -> bool:
        """A complete scan is on record (this run or an earlier one): not a cold start."""
        return self.last_success is not None

    def scan_eta(self, now: float) -> float | None:
        """Seconds the running scan still needs at its pace so far, if it can be told."""
        return _eta(self.running, self.page, self.last_page, self.started_at, now)

    def catalog_eta(self, now: float) -> float | None:
        """Seconds the running catalog refresh still needs at its pace so far."""
        return _eta(
            self.catalog_running,
            self.catalog_page,
            self.catalog_last_page,
            self.catalog_started_at,
            now,
        )


def _eta(
    running: bool, page: int, last_page: int | None, started: float | None, now: float
) -> float | None:
    if not running or not page or not last_page or started is None:
        return None
    return max(0.0, (now - started) / page * (last_page - page))


class Source:
    """Reads keyCRM and feeds the reconciler."""

    def __init__(
        self,
        client: KeycrmClient,
        store: Store,
        reconciler: Reconciler,
        metrics: MerchantMetrics,
        *,
        poll_interval: float,
        catalog_interval: float,
        needs_catalog: bool,
        lookups: LookupQueue | None = None,
        lookup_window: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self._store = store
        self._reconciler = reconciler
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._catalog_interval = catalog_interval
        self._needs_catalog = needs_catalog
        self._clock = clock
        self.progress = ScanProgress()
        self._scan_requested = anyio.Event()
        #: the process's webhook look-ups (None: this pipeline serves none, e.g. `once`)
        self.lookups = lookups
        self._lookup_window = lookup_window
        #: how long to wait before trying again after the last failed read
        self.retry_in = _FAILED_SCAN_RETRY
        self._first_catalog_tried = anyio.Event()

    @property
    def lookups_queued(self) -> int:
        return 0 if self.lookups is None else len(self.lookups)

    def request_scan(self) -> None:
        """Start a full scan now (a resync); requests during a scan merge into the next one."""
        self._scan_requested.set()

    async def load_state(self) -> None:
        """Pick up what earlier runs recorded, so `/status` and readiness survive a restart."""
        last = await self._store.get_meta("last_scan_success")
        if last is not None:
            self.progress.last_success = float(last)
            self._metrics.last_scan_success.set(float(last))
        catalog = await self._store.get_meta("catalog_at")
        if catalog is not None:
            self.progress.catalog_at = float(catalog)

    async def scan_once(self) -> None:
        """One complete pass over `/offers/stocks`; raises SourceError if keyCRM gives up on us."""
        scan = int(await self._store.get_meta("scan_generation") or 0) + 1
        started = self._clock()
        progress = self.progress
        progress.running, progress.page, progress.last_page = True, 0, None
        progress.started_at = started
        seen: dict[str, int] = {}
        duplicates = unchanged = 0
        complete = False
        tally = ScanTally(PAGE_SIZE)
        # The pages of the last complete scan: a page that comes back byte for byte is not
        # parsed; its SKUs' marks move in one statement (daemon/store/pages.py).
        marks = await self._store.scan_pages(scan)
        guard = await self._reconciler.begin_scan(scan)
        try:
            async for page in self.client.scan(marks):
                tally.add(page)
                dropped, skipped = await self._take_page(page, scan, seen, guard)
                duplicates += dropped
                unchanged += skipped
                progress.page += 1
                progress.last_page = page.last_page
            self._fail_if_incomplete(tally)
            await self._store.set_meta("scan_generation", str(scan))
            await self._store.drop_scan_pages(scan)
            vanished = await self._store.vanished(scan)
            if vanished:
                sample = [r.sku for r in vanished[:20]]
                log.warning("keycrm.skus_vanished", count=len(vanished), skus=sample)
                await self._reconciler.ingest(vanished, guard)
            complete = True
        finally:
            progress.running = False
            await self._reconciler.end_scan(guard, complete=complete)
        if duplicates:
            self._metrics.offers_skipped.labels(reason="duplicate_sku").inc(duplicates)
        finished = self._clock()
        await self._store.set_meta("last_scan_success", str(finished))
        progress.scans_completed += 1
        progress.last_success = finished
        progress.last_duration = finished - started
        progress.last_error = None
        self._metrics.last_scan_success.set(finished)
        self._metrics.scan_duration.set(finished - started)
        self._metrics.skus_tracked.set(len(seen))
        log.info(
            "keycrm.scan_finished",
            skus=len(seen),
            pages=progress.page,
            unchanged_pages=unchanged,
            duplicates=duplicates,
            duration_ms=round((finished - started) * 1000),
        )

    async def _take_page(
        self, page: Page[StockLevel], scan: int, seen: dict[str, int], guard: ScanGuard
    ) -> tuple[int, bool]:
        """Store and plan one page of scan `scan` (the `progress.page + 1`th); return how many
        duplicate SKUs it dropped and whether it was skipped as unchanged."""
        if page.unchanged is not None:
            offers = await self._store.skip_page(page.unchanged, scan)
            if offers is not None:
                self._metrics.scan_pages_unchanged.inc()
                return sum(not _first(seen, *offer) for offer in offers), True
            page = self.client.parse_unchanged(page)  # a record of it changed since: parse it
        levels = [level for level in page.items if _first(seen, level.sku, level.offer_id)]
        record = _recorded(page, levels, scan, self.progress.page + 1)
        changed = await self._store.save_stock(levels, scan, record)
        await self._reconciler.ingest(changed, guard)
        return len(page.items) - len(levels), False

    def _fail_if_incomplete(self, tally: ScanTally) -> None:
        problem = tally.verdict()
        if problem is None:
            return
        reason, detail = problem
        self._metrics.incomplete_scans.labels(reason=reason).inc()
        log.error(
            "keycrm.scan_incomplete",
            reason=reason,
            detail=detail,
            pages=tally.pages,
            hint="nothing vanishes, the zeroes it held wait for a complete pass; retried soon",
        )
        raise IncompleteScan(reason, detail)

    async def catalog_once(self) -> None:
        """One pass over `/offers?include=product`: names, barcodes, properties."""
        count = 0
        seen: dict[str, int] = {}
        # A renamed product moves stock to a new key and zeroes the old one: a catalog that
        # changed wholesale answers to a guard of its own, like a re-plan.
        scan = int(await self._store.get_meta("scan_generation") or 0) + 1
        guard = await self._reconciler.begin_scan(scan)
        progress = self.progress
        progress.catalog_running, progress.catalog_page = True, 0
        progress.catalog_last_page, progress.catalog_started_at = None, self._clock()
        complete = False
        try:
            async for page in self.client.catalog():
                # A duplicated SKU keeps its first offer here too, as the scan does.
                entries = [
                    e for e in page.items if seen.setdefault(e.sku, e.offer_id) == e.offer_id
                ]
                changed = await self._store.save_catalog(entries)
                await self._reconciler.ingest(changed, guard)
                count += len(entries)
                progress.catalog_page += 1
                progress.catalog_last_page = page.last_page
            complete = True
        finally:
            progress.catalog_running = False
            await self._reconciler.end_scan(guard, complete=complete)
        now = self._clock()
        await self._store.set_meta("catalog_at", str(now))
        self.progress.catalog_at = now
        log.info("keycrm.catalog_refreshed", offers=count)

    async def run_scans(self) -> None:
        """Scan, then wait `poll_interval` (or a resync request), forever."""
        if self._needs_catalog and self.progress.catalog_at is None:
            # Keys built from names or barcodes need the catalog: fetch it before the first scan.
            await self._guarded(self.catalog_once, "keycrm.catalog_failed")
        self._first_catalog_tried.set()
        while True:
            self.progress.resync = self._scan_requested.is_set()
            self._scan_requested = anyio.Event()
            ok = await self._guarded(self.scan_once, "keycrm.scan_failed")
            self.progress.resync = False
            wait = self._poll_interval if ok else min(self._poll_interval, self.retry_in)
            with anyio.move_on_after(wait):
                await self._scan_requested.wait()

    async def run_catalog(self) -> None:
        """Refresh the catalog every `catalog_interval` (only when a channel's keys need it)."""
        if not self._needs_catalog:
            return
        await self._first_catalog_tried.wait()
        while True:
            last = self.progress.catalog_at
            if last is None:
                due = self._clock() + _FAILED_CATALOG_RETRY
            else:
                due = last + self._catalog_interval
            await anyio.sleep(max(0.0, due - self._clock()))
            await self._guarded(self.catalog_once, "keycrm.catalog_failed")

    async def run_lookups(self) -> None:
        """Serve look-up requests first in, first out, in 50-SKU requests ahead of the scan.

        A batch stays queued on disk until its answer is stored; a failed look-up, or one cut
        off by a reload or a stop, leaves it queued in its place."""
        queue = self.lookups
        if queue is None:
            return
        while True:
            await queue.wait()
            window = queue.window(self._lookup_window)
            if window > 0:
                # A moment for more SKUs to come (longer the faster they come, none when they
                # are rare): one request then carries up to 50 of them.
                with anyio.move_on_after(window):
                    await queue.wait(PAGE_SIZE)
            try:
                batch = await queue.take(_LOOKUP_BATCH)
            except StoreUnavailable:
                await anyio.sleep(_STORE_RETRY)
                continue
            if not batch:
                continue

            skus = [entry.sku for entry in batch]

            async def look(skus: list[str] = skus) -> None:
                await self.look_up(skus)

            try:
                looked = await self._guarded(look, "keycrm.lookup_failed")
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _settle_lookups(queue.put_back, batch, attempts=1)
                raise
            if looked:
                await _settle_lookups(queue.done, batch)
            else:
                # Claimable again at once; do not spin on a failing keyCRM meanwhile.
                await _settle_lookups(queue.put_back, batch)
                await anyio.sleep(self.retry_in)

    async def look_up(self, skus: list[str]) -> None:
        """Look these SKUs up in keyCRM and plan what changed (no guard: a sell-out goes out
        now). Raises on failure, so a durable queue can hand them out again."""
        found = await self.client.lookup(skus)
        for reason, dropped in found.dropped.items():
            self._metrics.lookups_dropped.labels(reason=reason).inc(len(dropped))
            log.warning(
                "keycrm.lookup_skipped",
                reason=reason,
                count=len(dropped),
                skus=[sku[:80] for sku in dropped[:10]],
            )
        changed = await self._store.save_stock(found.levels, None)
        await self._reconciler.ingest(changed)

    async def _guarded(self, job: Callable[[], Awaitable[None]], event: str) -> bool:
        """Run one read of keyCRM; False (and `self.retry_in` set) if it failed as expected."""
        try:
            await job()
        except StoreUnavailable as exc:
            # The store logs the episode once; keyCRM's answer is not lost: it is asked again,
            # soon, so the daemon catches up by itself once the store can write.
            self.progress.last_error = str(exc)
            self.retry_in = _STORE_RETRY
            return False
        except SourceError as exc:
            self.progress.last_error = str(exc)
            log.error(event, error=str(exc), status=exc.status)  # noqa: TRY400 (expected: no traceback)
            self.retry_in = _FAILED_SCAN_RETRY
            return False
        return True


def _first(seen: dict[str, int], sku: str, offer_id: int) -> bool:
    """Whether this offer is the first of its SKU in the scan; a second offer is logged."""
    first = seen.setdefault(sku, offer_id)
    if first == offer_id:
        return True
    log.error("keycrm.duplicate_sku", sku=sku, offer_id=offer_id, kept_offer_id=first)
    return False


def _recorded(
    page: Page[StockLevel], levels: list[StockLevel], scan: int, number: int
) -> ScanPage | None:
    """What the store records of a parsed page, for the next scan to skip it if it comes back
    the same; None for a page that dropped a duplicate SKU (which offer counts depends on the
    pages before it, daemon/store/pages.py)."""
    if page.digest is None or len(levels) != len(page.items):
        return None
    mark = PageMark(
        scan,
        number,
        page.digest,
        page.size,
        page.total,
        page.current_page,
        page.last_page,
        page.next_url,
        page.has_next,
        page.no_sku,
    )
    return ScanPage(mark, [level.sku for level in levels], [level.offer_id for level in levels])


async def _settle_lookups(
    step: Callable[[list[LookupEntry]], Awaitable[None]],
    batch: list[LookupEntry],
    *,
    attempts: int | None = None,
) -> None:
    """Finish a claimed batch (`done` or `put_back`), retrying while the store cannot write:
    until then its SKUs stay queued, claimed (taken again after `RECLAIM_AFTER` at worst)."""
    tried = 0
    while True:
        try:
            await step(batch)
        except StoreUnavailable:
            tried += 1
            if attempts is not None and tried >= attempts:
                return
            await anyio.sleep(_STORE_RETRY)
        else:
            return
