"""The order feed: fresh stock without inbound webhooks, from keyCRM's orders by change time.

keyCRM's stock webhook cannot reach a daemon behind NAT, and a full scan of a million SKUs takes
hours. Orders are what move stock most often, and keyCRM lists them by `updated_at`; so every
`order_feed_interval` the feed reads the orders changed since its watermark (all pages) and
queues the SKUs of their lines for look-up in the same durable queue as a webhook's, where the
same batching serves them. The look-up is the truth; the feed, like the webhook, is a trigger.

The watermark is the time up to which every changed order has been read: the newest
`updated_at` seen, or the start of the last complete poll if later (so a quiet shop does not
look behind). It is kept in the state (`meta`), so a restart or a new leader continues where
the feed was. Each poll reaches back `order_feed_overlap` before it (clock skew between keyCRM
and us, an order committed late with an earlier `updated_at`), and the orders seen inside that
reach are remembered with a version (their `updated_at`, status and lines): one seen again
unchanged queues nothing again. The watermark moves only after a complete poll, and a page's
orders count as seen only once their SKUs are queued (then saved at once), so a kill at any
moment costs a page read again, never an order's SKUs. A malformed page fails the poll before
any of it is used (the client counts and logs it); the poll is tried again. A watermark far in
the past (a daemon stopped for a day) is caught up an hour's slice a poll, so the scan keeps its
share of keyCRM's budget meanwhile; `behind` says so until the feed is current.

A key without access to orders (401, 403), or a keyCRM without the route (404), turns the feed
off for this pipeline: one error line, `stocksync_order_feed_up` 0, and `status` says why. The
daemon runs on scans and webhooks meanwhile; a reload tries the feed again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import orjson
import structlog

from daemon.core.errors import SourceError, SourceFatal, StoreUnavailable
from daemon.core.merchant_metrics import MerchantMetrics
from daemon.keycrm.client import KeycrmClient
from daemon.store import Store

__all__ = ["STATE_KEY", "FeedProgress", "OrderFeed"]

log = structlog.get_logger("stocksync.keycrm")

#: the `meta` row holding the watermark and the orders seen within the overlap
STATE_KEY = "order_feed"
#: statuses on `/order` that mean "this key or this keyCRM has no order feed": stop asking
REFUSALS = ("401", "403", "404")
_RETRY = 60.0
#: the longest stretch of time one poll reads: a feed far behind catches up slice by slice
CATCH_UP_SLICE = 3600.0
_STORE_RETRY = 5.0

#: queue SKUs durably; returns how many the queue's cap turned away
Enqueue = Callable[[Sequence[str]], Awaitable[int]]


class QueueFull(SourceError):
    """The look-up queue turned SKUs away: the poll stops there and is read again later."""

    def __init__(self, overflow: int) -> None:
        super().__init__(
            f"the look-up queue is full ({overflow} SKUs turned away)", status="overflow"
        )


@dataclass(slots=True)
class FeedProgress:
    """Where the feed stands, for `/status`."""

    #: "polling", "waiting", "off" (by config), "refused" (keyCRM said 401/403/404)
    state: str = "waiting"
    watermark: float | None = None
    last_poll: float | None = None
    last_pages: int = 0
    last_error: str | None = None
    #: the last poll took longer than the interval: more changed orders than the feed's share
    behind: bool = False
    orders_seen: int = 0
    skus_queued: int = 0


class OrderFeed:
    """Polls `/order` by change time and queues the changed orders' SKUs for look-up."""

    def __init__(
        self,
        client: KeycrmClient,
        store: Store,
        enqueue: Enqueue,
        metrics: MerchantMetrics,
        *,
        interval: float,
        overlap: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._store = store
        self._enqueue = enqueue
        self._metrics = metrics
        self.interval = interval
        self.overlap = overlap
        self._clock = clock
        self.progress = FeedProgress()
        #: order id -> (version, updated_at), for the orders inside the overlap
        self._seen: dict[int, tuple[str, float]] = {}

    def lag(self, now: float) -> float:
        """Seconds between now and the watermark (0 while the feed is off or has no mark)."""
        mark = self.progress.watermark
        if self.progress.state == "refused" or mark is None:
            return 0.0
        return max(0.0, now - mark)

    async def run(self) -> None:
        """Load the watermark, then poll every `interval` until keyCRM refuses the route."""
        self._metrics.order_feed_up.set(1)
        while True:
            try:
                await self._load()
                break
            except StoreUnavailable:
                await anyio.sleep(_STORE_RETRY)
        while True:
            started = self._clock()
            wait = await self._poll_guarded(started)
            if wait is None:
                return
            self.progress.state = "waiting"
            self._metrics.order_feed_lag.set(self.lag(self._clock()))
            # Polls start every `interval`; one that took longer than that (many pages: the
            # feed is behind) is followed by a whole interval's pause, so the scan and the
            # catalog still get their share of the budget while it catches up.
            elapsed = self._clock() - started
            await anyio.sleep(wait - elapsed if elapsed < wait else wait)

    async def _load(self) -> None:
        saved = await self._store.get_meta(STATE_KEY)
        if saved is None:
            return
        try:
            data = orjson.loads(saved)
            mark = data.get("watermark")
            self.progress.watermark = None if mark is None else float(mark)
            self._seen = {int(k): (str(v), float(t)) for k, (v, t) in data["seen"].items()}
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            log.warning("keycrm.order_feed_state_unreadable", hint="starting from now")

    async def _save(self) -> None:
        seen = {str(k): [v, t] for k, (v, t) in self._seen.items()}
        state = {"watermark": self.progress.watermark, "seen": seen}
        await self._store.set_meta(STATE_KEY, orjson.dumps(state).decode())

    async def _poll_guarded(self, started: float) -> float | None:
        """One poll; seconds until the next (None: keyCRM refused the feed for good)."""
        progress = self.progress
        try:
            await self.poll(started)
        except StoreUnavailable as exc:
            progress.last_error = str(exc)
            return _STORE_RETRY
        except SourceFatal as exc:
            if exc.status in REFUSALS:
                self._refused(exc)
                return None
            progress.last_error = str(exc)
            log.error("keycrm.order_feed_failed", error=str(exc), status=exc.status)  # noqa: TRY400 (expected: no traceback)
            return max(self.interval, _RETRY)
        except SourceError as exc:
            progress.last_error = str(exc)
            log.error("keycrm.order_feed_failed", error=str(exc), status=exc.status)  # noqa: TRY400 (expected: no traceback)
            return max(self.interval, min(_RETRY, 4 * self.interval))
        progress.last_error = None
        return self.interval

    def _refused(self, exc: SourceFatal) -> None:
        progress = self.progress
        progress.state, progress.last_error = "refused", str(exc)
        self._metrics.order_feed_up.set(0)
        self._metrics.order_feed_lag.set(0)
        log.error(
            "keycrm.order_feed_off",
            status=exc.status,
            error=str(exc),
            hint='give the API key access to orders, or set order_feed_interval = "0"; '
            "scans and webhooks carry on",
        )

    async def poll(self, started: float) -> None:
        """Read every order changed since the watermark (less the overlap) and queue their
        SKUs; then move the watermark. Raises `SourceError`, `StoreUnavailable`."""
        progress = self.progress
        progress.state = "polling"
        mark = progress.watermark
        since = (started if mark is None else mark) - self.overlap
        # The end reaches past now by the overlap too: a keyCRM clock ahead of ours by less
        # than that still has its newest orders inside the window. A watermark long past (a
        # daemon stopped for a day) is caught up a slice at a time, with the scan's share of
        # the budget between the slices, rather than in one poll of thousands of pages.
        until = min(started + max(self.overlap, 1.0), since + CATCH_UP_SLICE)
        caught_up = until >= started
        newest = min(started, until) if mark is None else max(mark, min(started, until))
        pages = 0
        async for page in self._client.orders(since, until):
            pages += 1
            fresh = [o for o in page.items if self._seen.get(o.id, ("",))[0] != o.version]
            if not fresh:
                continue
            skus = list(dict.fromkeys(sku for order in fresh for sku in order.skus))
            if skus:
                overflow = await self._enqueue(skus)
                if overflow:
                    self._metrics.lookups_dropped.labels(reason="overflow").inc(overflow)
                    raise QueueFull(overflow)
            for order in fresh:
                self._seen[order.id] = (order.version, order.updated_at)
                newest = max(newest, order.updated_at)
            await self._save()  # these orders are queued: never queued again after a kill
            progress.orders_seen += len(fresh)
            progress.skus_queued += len(skus)
            self._metrics.order_feed_orders.inc(len(fresh))
            self._metrics.order_feed_skus.inc(len(skus))
            log.info("keycrm.order_feed_queued", orders=len(fresh), skus=len(skus))
        finished = self._clock()
        progress.watermark = newest
        # keyCRM keeps whole seconds and the filter takes them: the next poll starts at the
        # second `edge` falls in, so what it may show again is remembered from there.
        edge = math.floor(newest - self.overlap)
        self._seen = {k: v for k, v in self._seen.items() if v[1] >= edge}
        await self._save()
        progress.last_poll, progress.last_pages = finished, pages
        behind = finished - started > self.interval or not caught_up
        if behind:
            log.warning(
                "keycrm.order_feed_behind",
                pages=pages,
                duration_ms=round((finished - started) * 1000),
                lag_seconds=round(self.lag(finished)),
                hint="more changed orders than the feed's share of keyCRM's budget reads in "
                "one interval; it catches up, nothing is skipped",
            )
        progress.behind = behind
