"""`stocksync once`: one full scan, push the differences, wait for them; and its `--dry-run`.

The dry run works on a copy of the state file, so what it prints is exactly what a real run
would push (differences from what each channel acknowledged), and the real state is untouched.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import aiohttp
import anyio
import structlog
from prometheus_client import CollectorRegistry

from daemon import __version__
from daemon.commands.once_report import LINE_EVERY, progress_reporter, summarize
from daemon.config.settings import Config
from daemon.core.errors import SourceError
from daemon.core.telemetry import MerchantMetrics, Metrics
from daemon.pipeline.assembly import Parts, assemble, needs_catalog
from daemon.shell.statelock import StateLock
from daemon.store import SQLiteStore, Store

__all__ = ["dry_run", "run_once"]

log = structlog.get_logger("stocksync.once")


async def _read_keycrm(parts: Parts, config: Config) -> None:
    if needs_catalog(config):
        await parts.source.catalog_once()
    await parts.source.scan_once()


async def _unsettled(store: Store) -> int:
    """Items still waiting for a push or in flight, over every channel."""
    counts = await store.counts()
    return sum(c.get("pending", 0) + c.get("sending", 0) for c in counts.values())


def _copy_state(source: Path, target: Path) -> None:
    """A consistent copy of the state file (WAL included) through SQLite's backup API."""
    if not source.exists():
        return
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _metrics(config: Config) -> MerchantMetrics:
    """A fresh registry's view for the config's merchant (a run counts only its own pushes)."""
    metrics = Metrics(CollectorRegistry(), __version__)
    return metrics.for_merchant(config.merchant, [c.name for c in config.channels])


async def dry_run(config: Config, out: TextIO = sys.stdout) -> int:
    """Print the pushes a real run would make, one line each, and send nothing."""
    workdir = Path(tempfile.mkdtemp(prefix="stocksync-dry-"))
    try:
        copy = workdir / "state.db"
        _copy_state(config.daemon.state, copy)
        store = SQLiteStore(copy)
        metrics = _metrics(config)
        try:
            async with aiohttp.ClientSession() as session:
                parts = assemble(config, store, session, metrics)
                parts.dispatchers.clear()  # plan only: nothing may be sent
                try:
                    await _read_keycrm(parts, config)
                except SourceError as exc:
                    print(f"keyCRM: {exc}", file=sys.stderr)
                    return 1
            for channel in config.channels:
                items = await store.items(channel.name)
                rows = [r for r in items if r.status == "pending"]
                # A resync (or a reload) makes every item pending, changed or not: the
                # unchanged ones go out again, but a line "qty=21 (now: qty=21)" says nothing.
                again = [r for r in rows if r.acked is not None and r.acked == r.desired]
                for row in rows:
                    if row.acked is not None and row.acked == row.desired:
                        continue
                    was = "unknown" if row.acked is None else row.acked.describe()
                    print(
                        f"{channel.name}\t{row.key}\t{row.desired.describe()}\t(now: {was})",
                        file=out,
                    )
                line = f"# {channel.name}: {len(rows) - len(again)} to push"
                if again:
                    line += f"; {len(again)} unchanged pushed again (a resync asked for every item)"
                if held := sum(1 for r in items if r.status == "held"):
                    line += f"; {held} zeroes held by the mass-change guard (not pushed)"
                print(line, file=out)
        finally:
            await store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


async def run_once(
    config: Config, *, wait: float, out: TextIO = sys.stdout, progress_every: float = LINE_EVERY
) -> int:
    """Scan once, push every difference, wait; 0 if all acknowledged, else 1."""
    with StateLock(config.daemon.state):
        return await _run_once(config, wait=wait, out=out, progress_every=progress_every)


async def _run_once(config: Config, *, wait: float, out: TextIO, progress_every: float) -> int:
    store = SQLiteStore(config.daemon.state)
    metrics = _metrics(config)
    try:
        async with aiohttp.ClientSession() as session:
            await store.recover(time.time(), {c.name: c.timeout for c in config.channels})
            parts = assemble(config, store, session, metrics, debounce=0.0)
            names = [c.name for c in config.channels]
            reporting = progress_reporter(
                parts.source.progress, store, metrics, names, every=progress_every
            )
            async with reporting, anyio.create_task_group() as group:
                for dispatcher in parts.dispatchers.values():
                    group.start_soon(dispatcher.run)
                try:
                    await _read_keycrm(parts, config)
                except SourceError as exc:
                    print(f"keyCRM: {exc}", file=sys.stderr)
                    group.cancel_scope.cancel()
                    return 1
                deadline = time.time() + wait
                timed_out = False
                while await _unsettled(store):
                    if time.time() >= deadline:
                        timed_out = True
                        break
                    await anyio.sleep(0.05)
                group.cancel_scope.cancel()
        unsettled = await summarize(store, metrics, names, out)
        if timed_out:
            print(
                f"once stopped waiting: --timeout {wait:g}s reached with items not acknowledged; "
                "they go out at the next run (a longer --timeout waits for them)",
                file=sys.stderr,
            )
        return 0 if unsettled == 0 else 1
    finally:
        await store.close()
