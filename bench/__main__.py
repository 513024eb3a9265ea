"""Benchmarks: throughput of the reconcile path and memory per SKU, each against a naive baseline.

    python -m bench [--skus N]

Figures are ratios measured in one run on this machine, so they compare like with like:
- ingest: records planned and stored per second, in scan-page batches (as the daemon does) vs
  one record per call (the naive event-pipeline way).
- memory: peak resident memory of a fresh process tracking N SKUs for two channels, above an idle
  one: stocksync keeps its state in SQLite (on disk, SQLite's page cache bounded) vs the naive
  approach of keeping every record and item value in dicts.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import anyio
from prometheus_client import CollectorRegistry

from adapters import ADAPTERS
from daemon.config import ChannelConfig
from daemon.logs import configure_logging
from daemon.models import CatalogEntry, StockLevel, StockRecord
from daemon.plan import Contribution, Rules, combine, compile_template, contributions
from daemon.reconcile import Reconciler
from daemon.store import SQLiteStore, Timing
from daemon.telemetry import Metrics

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
        Metrics(CollectorRegistry(), [], "bench"),
        timing={c.name: Timing(0.0, 0.0) for c in chans},
        wake=lambda _name: None,
    )


async def ingest_rate(count: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "bench.db")
        reconciler = _reconciler(store)
        data = records(0, count)
        started = time.perf_counter()
        for start in range(0, count, batch):
            await reconciler.ingest(data[start : start + batch])
        elapsed = time.perf_counter() - started
        await store.close()
    return count / elapsed


async def _track_in_stocksync(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "bench.db")
        reconciler = _reconciler(store)
        for start in range(0, count, PAGE):
            batch = records(start, min(count, start + PAGE))
            await store.save_catalog([r.catalog for r in batch if r.catalog])
            await reconciler.ingest(await store.save_stock([r.stock for r in batch], 1))
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


def peak_rss(mode: str, count: int) -> int:
    """Peak resident memory (bytes) of a fresh process tracking `count` SKUs one way or another."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--child", mode, "--skus", str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip())


def child(mode: str, count: int) -> None:
    if mode == "stocksync":
        anyio.run(_track_in_stocksync, count)
    elif mode == "naive":
        _track_naively(count)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB


async def main(skus: int) -> None:
    print(f"stocksync benchmarks, {skus:,} SKUs, 2 channels")
    paged = await ingest_rate(skus, PAGE)
    single = await ingest_rate(min(skus, 5000), 1)
    print(
        f"ingest  {paged:,.0f} records/s in {PAGE}-record pages vs {single:,.0f} one at a time: "
        f"{paged / single:.1f}x"
    )
    mib = 1024 * 1024
    base = peak_rss("idle", 0)
    ours = peak_rss("stocksync", skus)
    naive = peak_rss("naive", skus)
    print(
        f"memory  peak RSS {ours / mib:.0f} MiB with state in SQLite vs {naive / mib:.0f} MiB "
        f"with everything in dicts (idle process {base / mib:.0f} MiB): {naive / ours:.1f}x less; "
        f"above idle {max(ours - base, 0) / skus:,.0f} vs {(naive - base) / skus:,.0f} B/SKU"
    )
    pages = -(-skus // PAGE)
    print(
        f"keyCRM  a full scan is {pages:,} requests: {pages / 60:.1f} min at 60 requests/min "
        f"(webhook look-ups carry fresh changes meanwhile)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--skus", type=int, default=20_000)
    parser.add_argument("--child", choices=("idle", "stocksync", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(level="warning")
    if args.child:
        child(args.child, args.skus)
    else:
        anyio.run(main, args.skus)
