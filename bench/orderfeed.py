"""Sales without a webhook: how fast the order feed carries them, and what it costs in keyCRM's
budget, beside the same load with the feed off (then only the next scan carries them).

A real daemon runs at keyCRM's own 60 requests a minute (the fake keyCRM answers 429 past it),
with no webhook, against N SKUs (default 100,000: a full scan takes over half an hour) and two
channels that need no catalog (Marketplacer by key map, Ordergroove by SKU). Its first scan is
under way throughout, as it would be for hours at a million SKUs. A driver places one order a
second on a random SKU for `--seconds` (60); each is timed from its placing to every channel
holding the SKU's new stock. The goal is `order_feed_interval` + `debounce` + 2 s.

The second run is the same with `order_feed_interval = "0"`: it counts the sales that reached
the channels in the same time, and measures the scan's pace, from which the time a full scan
(the sale's only carrier then) takes at this size.
"""

from __future__ import annotations

import random
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import anyio

from bench.options import Options
from bench.report import Figure
from bench.world import DaemonProcess, Fakes, available, free_port
from daemon.simulator import FakeOffer, variant_id

__all__ = ["run"]

REQUESTS_PER_MINUTE = 60
DEBOUNCE = 2.0  # the daemon's default `sync.debounce`
PAGE = 50


class Sales:
    """Places orders on the fake keyCRM and times each until both channels hold its stock."""

    def __init__(self, fakes: Fakes, seed: int) -> None:
        self._fakes = fakes
        self._rng = random.Random(seed)
        self._offers = [o for o in fakes.keycrm.offers.values() if o.sku]
        self._waiting: dict[int, tuple[FakeOffer, float]] = {}
        self.placed = 0
        self.seconds: list[float] = []

    def _holds(self, offer: FakeOffer) -> bool:
        units = available(offer.quantity, offer.reserve)
        mp = self._fakes.marketplacer.count_on_hand.get(variant_id(offer.id))
        return mp == units and self._fakes.ordergroove.live.get(offer.sku or "") == (units > 0)

    async def place(self, seconds: float) -> None:
        """One order a second on a random SKU with stock to sell (so its stock moves)."""
        started = time.monotonic()
        for n in range(round(seconds)):
            await anyio.sleep(max(0.0, started + n - time.monotonic()))
            offer = self._rng.choice(self._offers)
            while offer.quantity - offer.reserve < 2:
                offer = self._rng.choice(self._offers)
            self._fakes.keycrm.orders.place([(offer, 1.0)])
            self._waiting[offer.id] = (offer, time.monotonic())  # a later sale of it wins
            self.placed += 1

    async def watch(self) -> None:
        while True:
            now = time.monotonic()
            for key, (offer, since) in list(self._waiting.items()):
                if self._holds(offer):
                    self.seconds.append(now - since)
                    del self._waiting[key]
            await anyio.sleep(0.02)

    def quantile(self, q: float) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _scan_page(daemon: DaemonProcess, session: aiohttp.ClientSession) -> int:
    status = await daemon.status(session)
    return int(((status or {}).get("source") or {}).get("scan_page") or 0)


async def _one_run(
    options: Options, skus: int, seconds: float, *, feed: bool, within: float
) -> tuple[Sales, float, float, float]:
    """One daemon under the load: the sales, the feed's and the look-ups' keyCRM requests
    a minute from the first order until the last reached the channels, and the scan's pace
    (pages a second) meanwhile."""
    fakes = Fakes(skus, keycrm_limit=REQUESTS_PER_MINUTE)
    interval = f"{options.feed_interval:g}s" if feed else "0"
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            await fakes.start(stack)
            port = free_port()
            channels = fakes.channel("marketplacer", "mp", Path(folder)) + fakes.channel(
                "ordergroove", "og", Path(folder)
            )
            config = fakes.write_config(
                Path(folder),
                channels,
                port=port,
                requests_per_minute=REQUESTS_PER_MINUTE,
                poll_interval="5m",
                keycrm=f'order_feed_interval = "{interval}"',
                webhook=False,
            )
            daemon = DaemonProcess(config, port, fakes.env, Path(folder) / "daemon.log")
            await daemon.start()
            try:
                await daemon.wait_answering(session, within=60)
                sales = Sales(fakes, seed=11)
                mark = len(fakes.keycrm.requests)
                first_page, began = await _scan_page(daemon, session), time.monotonic()
                async with anyio.create_task_group() as watching:
                    watching.start_soon(sales.watch)
                    await sales.place(seconds)
                    with anyio.move_on_after(within):
                        while len(sales.seconds) < sales.placed:
                            await anyio.sleep(0.05)
                    watching.cancel_scope.cancel()
                asked = fakes.keycrm.requests[mark:]
                spent = time.monotonic() - began
                pace = (await _scan_page(daemon, session) - first_page) / spent
            finally:
                await daemon.stop()
    polls = sum(1 for _, path, _ in asked if path.endswith("/order"))
    lookups = sum(1 for _, _, query in asked if "filter[offers_sku]" in query)
    return sales, polls * 60 / spent, lookups * 60 / spent, pace


async def run(options: Options) -> list[Figure]:
    skus = options.size(100_000)
    seconds = options.drive(60.0)
    goal = options.feed_interval + DEBOUNCE + 2.0
    on, polls, lookups, _ = await _one_run(options, skus, seconds, feed=True, within=goal + 5)
    off_seconds = max(1.0, seconds / 3)
    off, _, _, pace = await _one_run(options, skus, off_seconds, feed=False, within=goal)
    load = f"{skus:,} SKUs, 1 order/s for {seconds:g} s, no webhook, {REQUESTS_PER_MINUTE}/min"
    timed = f"{len(on.seconds)} of {on.placed} sales timed"
    scan = (skus / PAGE) / pace if pace > 0 else None
    return [
        Figure(
            "orderfeed",
            "orderfeed.freshness_p99",
            "an order to every channel holding its stock, p99",
            on.quantile(0.99) if len(on.seconds) == on.placed else None,
            "s",
            goal,
            "lower",
            f"{load}; {timed}; goal: order_feed_interval ({options.feed_interval:g} s) + "
            f"debounce ({DEBOUNCE:g} s) + 2 s",
        ),
        Figure(
            "orderfeed",
            "orderfeed.freshness_max",
            "an order to every channel holding its stock, max",
            max(on.seconds) if len(on.seconds) == on.placed else None,
            "s",
            goal,
            "lower",
            f"{load}; {timed}",
        ),
        Figure(
            "orderfeed",
            "orderfeed.requests_per_minute",
            "keyCRM requests a minute the feed spent (polls)",
            polls,
            "req/min",
            note=f"{load}; and {lookups:.1f} look-ups/min for the SKUs it queued",
        ),
        Figure(
            "orderfeed",
            "orderfeed.off_reached",
            "with the feed off: share of sales on every channel within the goal",
            len(off.seconds) / off.placed if off.placed else None,
            "ratio",
            note=f"{off.placed} sales in {off_seconds:g} s; only a scan carries them then",
        ),
        Figure(
            "orderfeed",
            "orderfeed.off_next_scan",
            "with the feed off: a full scan at the measured pace (a sale waits up to this)",
            scan,
            "s",
            note=f"{pace:.2f} pages/s while the orders came, {skus / PAGE:,.0f} pages; plus "
            "poll_interval between scans",
        ),
    ]
