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
from bench.world import DaemonProcess, Fakes, free_port, post_webhook

__all__ = ["run"]

TICK = 0.01
REQUESTS_PER_MINUTE = 6000


def state_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("state.db*"))


async def _drive(fakes: Fakes, daemon: DaemonProcess, rate: float, seconds: float) -> None:
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
                offer.stock = {warehouse: (max(reserve, quantity + rng.choice((-1, 1))), reserve)}
                assert offer.sku is not None
                await post_webhook(session, daemon.base, token, [offer.sku])
            tick += TICK
            await anyio.sleep(max(0.0, tick - time.monotonic()))


async def run(options: Options) -> list[Figure]:
    skus = options.size(2_000)
    fakes = Fakes(skus)
    rate, seconds = options.change_rate, options.seconds
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
                await _drive(fakes, daemon, rate, seconds)
                await fakes.wait_consistent(60)
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
    ]
