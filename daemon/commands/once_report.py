"""What `stocksync once` tells while it works and when it is done.

A full scan and its pushes can take many minutes (keyCRM's budget bounds the scan: 5,000 SKUs
is 100 requests), so `once` shows where it stands: a progress bar with counts and an ETA on a
terminal, a line every `LINE_EVERY` seconds otherwise (a cron job's log, CI). At the end, one
line per channel says what this run did and what is left, with the reasons.

Counts come from the run's own metrics registry (items acknowledged this run are the
`stocksync_propagation_seconds` observations) and from the store's public `items()`/`counts()`.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TextIO

import anyio

from daemon.commands.statusview import duration
from daemon.core.telemetry import MerchantMetrics
from daemon.keycrm.source import ScanProgress
from daemon.store import Store

__all__ = ["LINE_EVERY", "progress_reporter", "summarize"]

#: seconds between progress lines when stderr is not a terminal
LINE_EVERY = 10.0
#: rejected items listed per channel at the end
REJECTED_SHOWN = 5


def acknowledged_this_run(metrics: MerchantMetrics, channel: str) -> int:
    """Items the channel acknowledged since this process' metrics were created."""
    value = metrics.registry.get_sample_value(
        "stocksync_propagation_seconds_count", {"merchant": metrics.merchant, "channel": channel}
    )
    return int(value or 0)


_WAITING = ("pending", "sending")


async def _pending(store: Store, channels: Sequence[str]) -> int:
    counts = await store.counts()
    return sum(counts.get(name, {}).get(s, 0) for name in channels for s in _WAITING)


def _scan_text(scan: ScanProgress) -> str:
    if scan.catalog_running:
        return f"catalog page {scan.catalog_page}/{scan.catalog_last_page or '?'}"
    if scan.running:
        return f"scan page {scan.page}/{scan.last_page or '?'}"
    return "scan done" if scan.scans_completed else "scan starting"


@asynccontextmanager
async def progress_reporter(
    scan: ScanProgress,
    store: Store,
    metrics: MerchantMetrics,
    channels: Sequence[str],
    *,
    stream: TextIO | None = None,
    every: float = LINE_EVERY,
) -> AsyncIterator[None]:
    """Report progress for the duration of the block: a bar on a terminal, lines otherwise."""
    stream = stream or sys.stderr
    started = time.monotonic()

    async def counts() -> tuple[int, int]:
        pushed = sum(acknowledged_this_run(metrics, name) for name in channels)
        return pushed, await _pending(store, channels)

    async def lines() -> None:
        while True:
            await anyio.sleep(every)
            pushed, pending = await counts()
            elapsed = duration(time.monotonic() - started)
            print(
                f"once: {_scan_text(scan)}; {pushed} pushed, {pending} pending ({elapsed})",
                file=stream,
                flush=True,
            )

    async def bar() -> None:
        from rich.console import Console  # noqa: PLC0415 -- a terminal only
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=Console(file=stream), transient=False) as progress:
            reading = progress.add_task("keyCRM pages", total=None)
            pushing = progress.add_task("pushes", total=None)
            while True:
                if scan.catalog_running:
                    progress.update(
                        reading,
                        description="keyCRM catalog",
                        completed=scan.catalog_page,
                        total=scan.catalog_last_page,
                    )
                else:
                    progress.update(
                        reading,
                        description="keyCRM scan",
                        completed=scan.page,
                        total=scan.last_page,
                    )
                pushed, pending = await counts()
                progress.update(pushing, completed=pushed, total=pushed + pending or None)
                await anyio.sleep(0.2)

    async with anyio.create_task_group() as group:
        group.start_soon(bar if stream.isatty() else lines)
        try:
            yield
        finally:
            group.cancel_scope.cancel()


async def summarize(
    store: Store, metrics: MerchantMetrics, channels: Sequence[str], out: TextIO
) -> int:
    """Print a line per channel (and its first rejections); return how many items are not done."""
    counts = await store.counts()
    unsettled = 0
    for name in channels:
        per = counts.get(name, {})
        acked, rejected, held = per.get("ok", 0), per.get("rejected", 0), per.get("held", 0)
        pending = sum(per.get(s, 0) for s in _WAITING)
        unsettled += pending + rejected + held
        line = (
            f"{name}: {acknowledged_this_run(metrics, name)} pushed this run; "
            f"{acked} acknowledged, {pending} pending"
        )
        rows = await store.items(name) if pending or rejected else []
        errors = Counter(r.last_error for r in rows if r.status in _WAITING and r.last_error)
        if errors:
            error, times = errors.most_common(1)[0]
            line += f" (last error: {error}, on {times} items)"
        line += f", {rejected} rejected"
        if held:
            line += f", {held} zeroes held by the mass-change guard"
        print(line, file=out)
        shown = [r for r in rows if r.status == "rejected"][:REJECTED_SHOWN]
        for row in shown:
            print(f"  rejected {row.key}: {row.last_error or 'no reason given'}", file=out)
        if rejected > len(shown):
            print(f"  ... and {rejected - len(shown)} more rejected", file=out)
    return unsettled
