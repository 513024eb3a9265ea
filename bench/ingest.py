"""In-process figures of the reconcile path, and memory per SKU against keeping everything in dicts.

- ingest: records planned and stored per second, in scan-page batches (as the daemon does) vs one
  record per call (the naive event-pipeline way);
- rescan: CPU per SKU to parse, store and plan a page that did not change (a rescan that finds
  nothing), from the page's bytes;
- memory: peak resident memory (VmHWM, read from /proc by a freshly spawned process, never
  inherited as `ru_maxrss` is) of a process tracking N SKUs for two channels: state in SQLite vs
  every record and item value in dicts.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import anyio
import orjson
from prometheus_client import CollectorRegistry

from adapters import ADAPTERS
from bench.options import Options
from bench.report import Figure
from bench.world import vm_hwm
from daemon.config.settings import ChannelConfig
from daemon.core.models import CatalogEntry, StockLevel, StockRecord
from daemon.core.telemetry import Metrics
from daemon.keycrm.payloads import parse_stock_page
from daemon.reconcile.reconciler import Reconciler
from daemon.rules.plan import Contribution, Rules, combine, compile_template, contributions
from daemon.store import SQLiteStore, Timing

__all__ = ["child", "run_ingest", "run_memory"]

PAGE = 50


def records(start: int, stop: int) -> list[StockRecord]:
    """Synthetic keyCRM records; three variants per product, so Klump-style keys aggregate."""
    return [
        StockRecord(
            StockLevel(f"SKU-{n:07d}", n, Decimal(n * 7 % 40), Decimal(n % 3), Decimal(99)),
            CatalogEntry(
                f"SKU-{n:07d}",
                n,
                product_id=n // 3,
                product_name=f"Product {n // 3}",
                barcode=str(400000000000 + n),
            ),
        )
        for n in range(start, stop)
    ]


def channels() -> tuple[ChannelConfig, ...]:
    spec = ADAPTERS["inventory_api"]
    by_name = Rules(key_parts=(compile_template("{product_name}"),), price=True)
    by_barcode = Rules(key_parts=(compile_template("{barcode}"),), location="3")
    return tuple(
        ChannelConfig(
            name, "inventory_api", spec, spec.settings.model_construct(), rules, 4, 10, 10, 1
        )
        for name, rules in (("by-name", by_name), ("by-barcode", by_barcode))
    )


def _reconciler(store: SQLiteStore) -> Reconciler:
    chans = channels()
    return Reconciler(
        store,
        chans,
        Metrics(CollectorRegistry(), "bench").for_merchant("default", []),
        timing={c.name: Timing(0.0, 0.0) for c in chans},
        wake=lambda _name: None,
    )


async def ingest_rate(count: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "bench.db")
        reconciler = _reconciler(store)
        data = records(0, count)
        waiting = 0
        started = time.perf_counter()
        for start in range(0, count, batch):
            chunk = data[start : start + batch]
            # Stored first: the reconciler plans what the store holds (daemon.reconcile).
            await store.save_catalog([r.catalog for r in chunk if r.catalog])
            waiting += await reconciler.ingest(
                await store.save_stock([r.stock for r in chunk], None)
            )
        elapsed = time.perf_counter() - started
        if waiting < count:  # a rate of doing nothing is no figure
            raise RuntimeError(f"only {waiting} items were planned for {count} records")
        await store.close()
    return count / elapsed


async def _scan(store: SQLiteStore, reconciler: Reconciler, count: int, scan: int) -> None:
    for start in range(0, count, PAGE):
        batch = records(start, min(count, start + PAGE))
        await store.save_catalog([r.catalog for r in batch if r.catalog])
        await reconciler.ingest(await store.save_stock([r.stock for r in batch], scan))


def stock_page(start: int, stop: int, total: int) -> bytes:
    """An `/offers/stocks` page body as keyCRM sends it, for the records of `records()`."""
    return orjson.dumps(
        {
            "current_page": start // PAGE + 1,
            "last_page": -(-total // PAGE),
            "per_page": PAGE,
            "total": total,
            "data": [
                {
                    "id": n,
                    "sku": f"SKU-{n:07d}",
                    "price": 99.0,
                    "purchased_price": 0,
                    "quantity": n * 7 % 40,
                    "reserve": n % 3,
                }
                for n in range(start, stop)
            ],
        }
    )


async def rescan_cpu(count: int) -> float:
    """CPU seconds per SKU for a scan that finds every record unchanged, as the daemon's scan
    does it after HTTP: page bytes parsed, stored, planned (the store's worker thread counted)."""
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "bench.db")
        reconciler = _reconciler(store)
        await _scan(store, reconciler, count, 1)
        bodies = [stock_page(s, min(count, s + PAGE), count) for s in range(0, count, PAGE)]

        async def scan(generation: int) -> None:
            for body in bodies:
                page = parse_stock_page(orjson.loads(body))
                await reconciler.ingest(await store.save_stock(page.items, generation))

        await scan(2)  # the first scan from pages stores each offer's digest
        started = time.process_time()
        await scan(3)
        elapsed = time.process_time() - started
        await store.close()
    return elapsed / count


async def run_ingest(options: Options) -> list[Figure]:
    skus = options.size(20_000, big=1_000_000)
    paged = await ingest_rate(skus, PAGE)
    single = await ingest_rate(min(skus, 5000), 1)
    rescan = await rescan_cpu(skus)
    size = f"{skus:,} SKUs x 2 channels, in process"
    return [
        Figure(
            "ingest",
            "ingest.paged",
            f"records planned and stored, {PAGE}-record pages",
            paged,
            "records/s",
            note=size,
        ),
        Figure(
            "ingest",
            "ingest.single",
            "records planned and stored, one per call",
            single,
            "records/s",
            note=size,
        ),
        Figure("ingest", "ingest.speedup", "paged / one per call", paged / single, "x"),
        Figure(
            "ingest",
            "ingest.rescan_cpu",
            "CPU per SKU, rescan that finds nothing changed",
            rescan * 1e6,
            "µs",
            15.0,
            "lower",
            f"{size}; page parsing + store + plan, without HTTP",
        ),
    ]


# --- memory: one fresh process per figure ---------------------------------------------------------


async def _track_in_stocksync(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "bench.db")
        await _scan(store, _reconciler(store), count, 1)
        await store.close()


def _track_naively(count: int) -> None:
    """The naive daemon: every record and every item value in dicts, planned in one pass."""
    state = {record.sku: record for record in records(0, count)}
    items: dict[tuple[str, str], object] = {}
    for channel in channels():
        shares: dict[str, list[Contribution]] = {}
        for record in state.values():
            for share in contributions(record, channel.rules)[0]:
                shares.setdefault(share.key, []).append(share)
        for key, group in shares.items():
            items[(channel.name, key)] = combine(group, channel.rules)
    assert items


def child(mode: str, count: int) -> None:
    """Runs in the spawned process: track `count` SKUs one way, then print this process's VmHWM."""
    if mode == "stocksync":
        anyio.run(_track_in_stocksync, count)
    elif mode == "naive":
        _track_naively(count)
    print(vm_hwm())


def peak_memory(mode: str, count: int) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--child", mode, "--skus", str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


async def run_memory(options: Options) -> list[Figure]:
    skus = options.size(20_000, big=1_000_000)
    base = peak_memory("idle", 0)
    ours = peak_memory("stocksync", skus)
    naive = peak_memory("naive", skus)
    size = f"{skus:,} SKUs x 2 channels, in process"
    return [
        Figure("memory", "memory.idle", "peak memory of an idle process (libraries)", base, "B"),
        Figure(
            "memory",
            "memory.stocksync",
            "peak memory tracking the SKUs, state in SQLite",
            ours,
            "B",
            note=size,
        ),
        Figure(
            "memory",
            "memory.naive",
            "peak memory tracking the SKUs, all in dicts",
            naive,
            "B",
            note=size,
        ),
        Figure(
            "memory",
            "memory.stocksync_per_sku",
            "above idle per SKU, state in SQLite",
            max(ours - base, 0) / max(skus, 1),
            "B/SKU",
        ),
        Figure(
            "memory",
            "memory.naive_per_sku",
            "above idle per SKU, all in dicts",
            max(naive - base, 0) / max(skus, 1),
            "B/SKU",
        ),
    ]
