"""Steady changes through the webhook: how fast the state file grows, and how full the requests
are (SKUs per keyCRM look-up, variants per Marketplacer request) while changes keep coming.

A driver changes `change_rate` SKUs a second in the fake keyCRM and posts keyCRM's webhook for each,
one by one; a real daemon looks them up and pushes them to Marketplacer (default limits). The
state file's size (database, WAL and shared memory) is read before and after, once settled.
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
from bench.world import DaemonProcess, Fakes, available, free_port, post_webhook
from daemon.simulator import variant_id

__all__ = ["run"]

TICK = 0.01
REQUESTS_PER_MINUTE = 6000
#: the daemon's default `sync.debounce`: freshness is measured against it plus one second
DEBOUNCE = 2.0


class Freshness:
    """From each change in keyCRM to Marketplacer holding it: the look-up window, the debounce
    and the batch window together. A change overtaken by a later one of the same variant is
    not timed (the later one is)."""

    def __init__(self, fakes: Fakes) -> None:
        self._fakes = fakes
        self._waiting: dict[str, tuple[int, float]] = {}
        self.seconds: list[float] = []

    def changed(self, variant: str, want: int) -> None:
        self._waiting[variant] = (want, time.monotonic())

    async def watch(self) -> None:
        held = self._fakes.marketplacer.count_on_hand
        while True:
            now = time.monotonic()
            for variant, (want, since) in list(self._waiting.items()):
                if held.get(variant) == want:
                    self.seconds.append(now - since)
                    del self._waiting[variant]
            await anyio.sleep(0.005)

    def p99(self) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def state_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("state.db*"))


async def _drive(
    fakes: Fakes, daemon: DaemonProcess, rate: float, seconds: float, fresh: Freshness
) -> None:
    """One change per webhook, evenly spread, as keyCRM sends them."""
    rng = random.Random(3)
    offers = [o for o in fakes.keycrm.offers.values() if o.sku]
    token = fakes.env["BENCH_WEBHOOK_TOKEN"]
    owed = 0.0
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        tick = started
        while tick < started + seconds:
            owed += rate * TICK
            chosen = rng.sample(offers, int(owed))
            owed -= len(chosen)
            for offer in chosen:
                warehouse, (quantity, reserve) = next(iter(offer.stock.items()))
                before = available(offer.quantity, offer.reserve)
                offer.stock = {warehouse: (max(reserve, quantity + rng.choice((-1, 1))), reserve)}
                if available(offer.quantity, offer.reserve) != before:
                    fresh.changed(variant_id(offer.id), available(offer.quantity, offer.reserve))
                assert offer.sku is not None
                await post_webhook(session, daemon.base, token, [offer.sku])
            tick += TICK
            await anyio.sleep(max(0.0, tick - time.monotonic()))


async def run(options: Options) -> list[Figure]:
    skus = options.size(2_000)
    fakes = Fakes(skus)
    rate, seconds = options.change_rate, options.drive(30.0)
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            await fakes.start(stack)
            port = free_port()
            channel = fakes.channel("marketplacer", "mp", Path(folder))
            config = fakes.write_config(
                Path(folder), channel, port=port, requests_per_minute=REQUESTS_PER_MINUTE
            )
            daemon = DaemonProcess(config, port, fakes.env, Path(folder) / "daemon.log")
            await daemon.start()
            try:
                await daemon.wait_settled(session, within=skus / 50 / 50 + skus / 1000 + 60)
                before = state_bytes(Path(folder))
                keycrm_mark = len(fakes.keycrm.requests)
                channel_mark = len(fakes.marketplacer.documents)
                fresh = Freshness(fakes)
                async with anyio.create_task_group() as watching:
                    watching.start_soon(fresh.watch)
                    await _drive(fakes, daemon, rate, seconds, fresh)
                    await fakes.wait_consistent(60)
                    await anyio.sleep(0.02)  # one more look by the watcher
                    watching.cancel_scope.cancel()
                await daemon.wait_settled(session, within=60)
                lookups = [
                    len(query["filter[offers_sku]"].split(","))
                    for _, _, query in fakes.keycrm.requests[keycrm_mark:]
                    if "filter[offers_sku]" in query
                ]
                items = fakes.marketplacer_items(channel_mark)
                after = state_bytes(Path(folder))
            finally:
                await daemon.stop()
    per_lookup = sum(lookups) / len(lookups) if lookups else None
    per_request = sum(items) / len(items) if items else None
    load = f"{rate:g} changes/s for {seconds:g} s, {skus:,} SKUs"
    return [
        Figure(
            "growth",
            "growth.state_bytes_per_minute",
            "state file growth (database + WAL)",
            (after - before) / seconds * 60,
            "B/min",
            note=f"{load}, 1 channel; target: bounded and documented",
        ),
        Figure(
            "growth",
            "growth.keycrm_skus_per_lookup",
            "SKUs per keyCRM look-up request",
            per_lookup,
            "SKUs",
            20,
            "higher",
            f"{load}; {len(lookups) / seconds * 60:,.0f} look-ups/min of {REQUESTS_PER_MINUTE:,}",
        ),
        Figure(
            "growth",
            "growth.marketplacer_items_per_request",
            "variants per Marketplacer request",
            per_request,
            "items",
            10,
            "higher",
            load,
        ),
        Figure(
            "growth",
            "growth.freshness_p99",
            "change in keyCRM to Marketplacer holding it, p99",
            fresh.p99(),
            "s",
            DEBOUNCE + 1.0,
            "lower",
            f"{load}; {len(fresh.seconds):,} changes timed; target: the debounce "
            f"({DEBOUNCE:g} s) + 1 s",
        ),
    ]
