"""What many merchants' SQLite stores cost one process: RSS after opening and reading them.

    python -m bench.stores [MERCHANTS] [--skus N] [--cache-kib K]

One state of N SKUs x 2 channels (records, shares, items) is built once and copied per
merchant; the process opens every copy (`open_store(..., merchants=MERCHANTS)`, or
`--cache-kib` for each), reads each through as a start and a resync do (counts, every record
page, every item page of both channels, a claim), and prints the RSS it grew by and the threads
it runs. Measured on this machine (200 merchants x 5,000 SKUs x 2 channels): ~30 MiB opened;
after reading, ~280 MiB at SQLite's default cache (2,000 KiB a connection), ~90 MiB at
`cache_for(200)` (327 KiB), ~80 MiB at 256 KiB; two threads (anyio's workers, reused).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
from decimal import Decimal
from pathlib import Path

import anyio

from daemon.core.models import StockLevel, Value
from daemon.rules.plan import Contribution
from daemon.store import SQLiteStore, Timing, open_store

T = Timing(debounce=0.0, max_delay=1.0)
CHANNELS = ("a", "b")
BATCH = 1000


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def build(path: Path, skus: int) -> None:
    store = SQLiteStore(path)
    names = [f"SKU-{n:06d}" for n in range(skus)]
    for start in range(0, skus, BATCH):
        part = names[start : start + BATCH]
        levels = [StockLevel(k, 1, Decimal(3), Decimal(0), Decimal("9.5")) for k in part]
        await store.save_stock(levels, 1)
        for channel in CHANNELS:
            shares = [(k, Contribution(k, Decimal(3), Decimal("9.5"))) for k in part]
            await store.replace_shares(channel, part, shares)
            await store.set_desired(channel, {k: Value(quantity=3) for k in part}, 1.0, T)
    await store.close()


async def read_through(store: SQLiteStore) -> None:
    await store.counts()
    await store.positive_acked()
    after = ""
    while page := await store.records(after, BATCH):
        after = page[-1].sku
    for channel in CHANNELS:
        key = ""
        while rows := await store.items_page(channel, key, BATCH):
            key = rows[-1].key
    await store.claim(CHANNELS[0], 10.0, 100)


async def measure(merchants: int, skus: int, cache_kib: int | None, folder: Path) -> str:
    seed = folder / "seed.db"
    await build(seed, skus)
    paths = [folder / f"m{n:03d}.db" for n in range(merchants)]
    for path in paths:
        shutil.copy(seed, path)
    base = rss_mib()
    stores = [
        open_store(path, merchants=merchants)
        if cache_kib is None
        else SQLiteStore(path, cache_kib=cache_kib)
        for path in paths
    ]
    opened = rss_mib() - base
    for store in stores:
        await read_through(store)
    grown = rss_mib() - base
    for store in stores:
        await store.close()
    return (
        f"{merchants} stores x {skus} SKUs x {len(CHANNELS)} channels, cache "
        f"{cache_kib or 'cache_for'} KiB: opened +{opened:.0f} MiB, read through "
        f"+{grown:.0f} MiB, {threading.active_count()} threads"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stores")
    parser.add_argument("merchants", type=int, nargs="?", default=200)
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--cache-kib", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stocksync-stores-") as folder:
        print(anyio.run(measure, args.merchants, args.skus, args.cache_kib, Path(folder)))


if __name__ == "__main__":
    main()
