"""Steady-state throughput of the store: the same workload on a SQLite file and on PostgreSQL.

One real `stocksync run` and one batching channel (Marketplacer, 100 items a request, a rate
limit far above what the process can reach), N SKUs synced once; then a SIGUSR1 resync sends
every item again. Items acknowledged per second are counted at the fake as it answers (a sampler
reads its request log every 10 ms), between the moments 10% and 90% of the items had arrived:
the steady part, without the replan and paging of the start or the last batches' tail. Every
claim, push outcome and settle is a store transaction, so this is the store's pace, with the
planning, HTTP and JSON around it held the same.

PostgreSQL runs at its own durable defaults (fsync, synchronous_commit on), over a Unix socket
on the same machine: a database across a network adds a round trip to every transaction.
"""

from __future__ import annotations

import signal
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import anyio

from bench.options import Options
from bench.pgserver import DURABLE, NO_BINARIES, find_bindir, running_server, state_url
from bench.report import Figure, Skipped
from bench.resync import cpu_seconds
from bench.world import DaemonProcess, Fakes, free_port

__all__ = ["run", "steady_rate"]

CHANNEL = 'batch_size = 100\nrate_limit = "1000/s"\n'  # 100,000 items/s: never the bound
SAMPLE = 0.01


def steady_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Items per second between the samples where 10% and 90% of `total` had arrived
    (`samples`: time, items so far). Too few samples for a middle (a tiny run): first to last."""
    low = next(s for s in samples if s[1] >= total * 0.1)
    high = next(s for s in samples if s[1] >= total * 0.9)
    if high[0] - low[0] < SAMPLE * 5:
        low, high = samples[0], samples[-1]
    return (high[1] - low[1]) / max(high[0] - low[0], SAMPLE)


async def _sample(fakes: Fakes, since: int, total: int, samples: list[tuple[float, int]]) -> None:
    """(time, items acknowledged since the resync) every SAMPLE seconds, until all `total`."""
    documents = fakes.marketplacer.documents
    seen, items = since, 0
    samples.append((time.monotonic(), 0))
    while items < total:
        await anyio.sleep(SAMPLE)
        now = time.monotonic()
        fresh = documents[seen:]
        seen += len(fresh)
        items += sum(len(d.get("variables") or {}) for d in fresh)
        samples.append((now, items))


async def measure(options: Options, skus: int, state: str | None) -> tuple[float, float]:
    """Acknowledged items per second on `state` (None: a SQLite file), steady part of a resync;
    and the share of one core the daemon used over the whole resync (low: it waits, on round
    trips or locks, rather than computes)."""
    fakes = Fakes(skus)
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            await fakes.start(stack)
            port = free_port()
            channel = fakes.channel("marketplacer", "mp", Path(folder), CHANNEL)
            config = fakes.write_config(Path(folder), channel, port=port, state=state)
            daemon = DaemonProcess(config, port, fakes.env, Path(folder) / "daemon.log")
            await daemon.start()
            stack.push_async_callback(daemon.stop)
            await daemon.wait_settled(session, within=skus / 50 / 100 * 4 + skus / 1000 + 120)
            samples: list[tuple[float, int]] = []
            since = len(fakes.marketplacer.documents)
            cpu = cpu_seconds(daemon.pid)
            daemon.signal(signal.SIGUSR1)
            with anyio.fail_after(skus / 500 + 120):
                await _sample(fakes, since, skus, samples)
            busy = (cpu_seconds(daemon.pid) - cpu) / (samples[-1][0] - samples[0][0])
    return steady_rate(samples, skus), busy


async def run(options: Options) -> list[Figure]:
    skus = options.size(20_000)
    what = "acknowledged items/s, batching channel, steady part of a resync"
    load = f"{skus:,} SKUs x 1 Marketplacer channel, 100 items a request, real daemon"
    rate, busy = await measure(options, skus, None)
    sqlite = Figure(
        "store",
        "store.throughput_sqlite",
        f"{what}: SQLite",
        rate,
        "items/s",
        note=f"{load}; WAL, synchronous=NORMAL; daemon CPU {busy:.0%} of a core",
    )
    bindir = find_bindir()
    if bindir is None:
        raise Skipped(f"PostgreSQL figure: {NO_BINARIES}", [sqlite])
    with running_server(bindir, DURABLE) as server, server.database() as database:
        rate, busy = await measure(options, skus, state_url(server.dsn(database)))
    return [
        sqlite,
        Figure(
            "store",
            "store.throughput_postgresql",
            f"{what}: PostgreSQL",
            rate,
            "items/s",
            sqlite.value,
            note=(
                f"{load}; PostgreSQL's durable defaults, Unix socket, same machine; "
                f"daemon CPU {busy:.0%} of a core; "
                "informational: the target column is SQLite's figure, the ratio PostgreSQL/SQLite"
            ),
        ),
    ]
