"""The event loop under a full resync, and a restart, at size: a real daemon, probed from outside.

A separate prober process (bench/probe.py) asks `/healthz` every 20 ms, so a slow answer is the
daemon's own stall, not the bench's. The daemon's peak memory is its VmHWM, read from /proc while
it runs: it covers the first full sync and the resync.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import anyio
import orjson

from bench.options import Options
from bench.report import Figure
from bench.world import DaemonProcess, Fakes, free_port, settled, vm_hwm

__all__ = ["Prober", "run"]

KINDS = ("marketplacer", "ordergroove")
CHANNEL = 'batch_size = 100\nrate_limit = "100/s"\n'  # 10,000 items/s: the loop is the bound


class Prober:
    """`python -m bench.probe URL` in its own process; `finish()` returns what it saw."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._process: anyio.abc.Process | None = None

    async def start(self) -> None:
        self._process = await anyio.open_process(
            [sys.executable, "-m", "bench.probe", self.url], stdin=None, stderr=None
        )
        assert self._process.stdout is not None
        await self._process.stdout.receive()  # "ready"

    async def finish(self) -> list[tuple[float, float, int]]:
        assert self._process is not None
        assert self._process.stdout is not None
        self._process.send_signal(signal.SIGTERM)
        chunks = []
        async for chunk in self._process.stdout:
            chunks.append(chunk)
        await self._process.wait()
        text = b"".join(chunks).decode().split("ready", 1)[-1]
        return [tuple(row) for row in orjson.loads(text)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rescan_cpu(daemon: DaemonProcess, session: aiohttp.ClientSession, within: float) -> float:
    """The daemon's CPU over one whole scan that finds nothing changed: from the end of one
    scan to the end of the next (the poll interval is 1 s, so little idle time is counted)."""

    async def scans_completed() -> int:
        status = await daemon.status(session)
        return 0 if status is None else int(status["source"]["scans_completed"])

    with anyio.fail_after(within):
        first = await scans_completed()
        while await scans_completed() == first:
            await anyio.sleep(0.5)  # /status costs the daemon CPU too: ask seldom
        started = cpu_seconds(daemon.pid)
        while await scans_completed() <= first + 1:
            await anyio.sleep(0.5)  # /status costs the daemon CPU too: ask seldom
        return cpu_seconds(daemon.pid) - started


def scan_pages(fakes: Fakes) -> int:
    """Full-scan pages keyCRM has served so far (look-ups name SKUs; scans do not)."""
    return sum(
        1
        for _, path, query in fakes.keycrm.requests
        if path.endswith("/offers/stocks") and "filter[offers_sku]" not in query
    )


def worst(probes: list[tuple[float, float, int]], since: float) -> float:
    return max((seconds for sent, seconds, _ in probes if sent >= since), default=0.0)


async def _resync_done(
    daemon: DaemonProcess,
    session: aiohttp.ClientSession,
    fakes: Fakes,
    marks: tuple[int, int],
    skus: int,
    channels: int,
    within: float,
) -> None:
    """Until every channel got every item again and the daemon has settled after its scan."""
    wanted = skus * ((channels + 1) // 2), skus * (channels // 2)
    with anyio.fail_after(within):
        while True:
            pushed = sum(fakes.marketplacer_items(marks[0])), sum(fakes.ordergroove_items(marks[1]))
            if pushed[0] >= wanted[0] and pushed[1] >= wanted[1]:
                status = await daemon.status(session)
                if status is not None and settled(status, 2):
                    return
            await anyio.sleep(0.2)


async def run(options: Options) -> list[Figure]:
    skus = options.size(20_000, big=1_000_000)
    count = options.channels
    fakes = Fakes(skus)
    size = f"{skus:,} SKUs x {count} channels"
    scan = skus / 50 / 100  # keyCRM pages at 6,000 a minute
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            await fakes.start(stack)
            port = free_port()
            channels = "".join(
                fakes.channel(KINDS[n % 2], f"{KINDS[n % 2]}-{n}", Path(folder), CHANNEL)
                for n in range(count)
            )
            # Scans run back to back (1 s apart), as a busy merchant's would: the resync and
            # the restart are measured with a scan under way, and a rescan's CPU is measurable.
            config = fakes.write_config(Path(folder), channels, port=port, poll_interval="1s")
            log = Path(folder) / "daemon.log"
            daemon = DaemonProcess(config, port, fakes.env, log)
            await daemon.start()
            try:
                await daemon.wait_settled(session, within=scan * 4 + skus / 2000 + 120)
                prober = Prober(f"{daemon.base}/healthz")
                await prober.start()
                marks = len(fakes.marketplacer.documents), len(fakes.ordergroove.requests)
                signalled = time.monotonic()
                cpu_before, pages_before = cpu_seconds(daemon.pid), scan_pages(fakes)
                daemon.signal(signal.SIGUSR1)
                await _resync_done(
                    daemon, session, fakes, marks, skus, count, within=scan * 4 + skus / 2000 + 120
                )
                resync_seconds = time.monotonic() - signalled
                resync_cpu = cpu_seconds(daemon.pid) - cpu_before
                resync_pages = scan_pages(fakes) - pages_before
                probes = await prober.finish()
                stall = worst(probes, signalled)
                peak = vm_hwm(daemon.pid)
                scrapes = []
                for _ in range(5):
                    started = time.monotonic()
                    async with session.get(f"{daemon.base}/metrics") as response:
                        await response.read()
                    scrapes.append(time.monotonic() - started)
                rescan = await rescan_cpu(daemon, session, within=scan * 3 + 60)
            finally:
                await daemon.stop()

            again = DaemonProcess(config, port, fakes.env, log)
            await again.start()
            try:
                answered = await again.wait_answering(session, within=scan * 4 + 600)
            finally:
                await again.stop()

    # The resync's CPU less its scan pages' share (a page costs what a rescan's pages cost):
    # what remains is planning, claiming, sending and settling the items it pushed again.
    per_page = rescan / max(1, -(-skus // 50))
    per_ack = max(0.0, resync_cpu - resync_pages * per_page) / (skus * count)
    return [
        Figure(
            "resync",
            "resync.healthz_worst_stall",
            "worst /healthz answer during a SIGUSR1 resync",
            stall,
            "s",
            0.1,
            "lower",
            size,
        ),
        Figure(
            "resync",
            "resync.seconds",
            "full resync, signal to every item pushed again",
            resync_seconds,
            "s",
            note=size,
        ),
        Figure(
            "resync",
            "resync.peak_memory",
            "daemon peak memory (VmHWM), first sync + resync",
            peak,
            "B",
            400 * 2**20,
            "lower",
            f"{size}; the target is for 1M x 4",
        ),
        Figure(
            "resync",
            "resync.metrics_scrape",
            "/metrics scrape, slowest of 5",
            max(scrapes),
            "s",
            0.05,
            "lower",
            f"{skus * count:,} items",
        ),
        Figure(
            "resync",
            "resync.rescan_cpu",
            "daemon CPU per SKU, a scan that finds nothing changed",
            rescan / skus * 1e6,
            "µs",
            15.0,
            "lower",
            f"{size}; real daemon: HTTP, JSON, store and plan, from one scan's end to the next",
        ),
        Figure(
            "resync",
            "resync.ack_cpu",
            "daemon CPU per acknowledged item, batching channels",
            per_ack * 1e6,
            "µs",
            40.0,
            "lower",
            f"{size}, batches of 100; a resync's CPU less its scan pages' share",
        ),
        Figure(
            "resync",
            "restart.healthz_seconds",
            "/healthz answers after a restart",
            answered,
            "s",
            2.0,
            "lower",
            f"{size}; from spawning the process",
        ),
    ]
