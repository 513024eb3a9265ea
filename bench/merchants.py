"""Many merchants in one process: `[daemon] merchants = "DIR"`, `--merchants` x `--skus` x 2
channels (200 x 5,000 x 2 by default: a million SKUs), through a first sync and a SIGUSR1 resync.

One real `stocksync run` serves every merchant against the fakes of bench/fleet.py (one aiohttp
server, a path prefix per merchant, on the bench's loop: the daemon's CPU and memory are its own).
A prober process asks `/healthz` every 20 ms from the moment it first answers to the end. After
the resync, each merchant gets one change a second in its keyCRM, its webhook posted with its
token at once, and the time until both its channels hold the new stock is taken (freshness).

CPU per acknowledged item is the daemon's CPU over the resync (signal to every item pushed again
and everything settled) divided by the items the channels acknowledged meanwhile; the same is
measured on a single-merchant daemon (today's one-merchant file) of one merchant's size, and the
ratio is many / single: each merchant's work should cost what it costs alone.

Then the same merchants sharded over three replicas on PostgreSQL (bench/shards.py: 60 of
them, 200 SKUs each): how evenly they share, and how fast after a kill and after a join; skipped,
with the reason and the figures above kept, without PostgreSQL server binaries.
"""

from __future__ import annotations

import random
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from bench import shards
from bench.fleet import REQUESTS_PER_MINUTE, Fleet, Freshness, Tally
from bench.options import Options
from bench.report import Figure, Skipped
from bench.resync import Prober, cpu_seconds
from bench.world import DaemonProcess, free_port, post_webhook, settled, vm_hwm

__all__ = ["run"]

#: the daemon's default `sync.debounce`, which the merchants' files keep
DEBOUNCE = 2.0
MEMORY = 600 * 2**20
STALL = 0.1
#: the daemon as operators run it: `stocksync run` on a main file naming the merchants folder
SERVE = ("-m", "daemon", "run")


class Run:
    """One daemon over a fleet: CPU, items and seconds of its first sync and of its resync."""

    def __init__(self, fleet: Fleet, daemon: DaemonProcess, session: aiohttp.ClientSession):
        self.fleet = fleet
        self.daemon = daemon
        self.session = session
        self.tally = Tally(fleet)
        self.items = len(fleet.shops) * fleet.skus * 2
        # A generous bound: a millisecond of the whole machine per item, plus start-up.
        self.within = self.items * 1e-3 + 120

    async def all_settled(self, scans: int) -> bool:
        status = await self.daemon.status(self.session)
        if status is None:
            return False
        if "merchants" not in status:
            return settled(status, scans)
        merchants: dict[str, Any] = status["merchants"]
        return len(merchants) == len(self.fleet.shops) and all(
            settled(m, scans) for m in merchants.values()
        )

    async def first_sync(self) -> tuple[float, float]:
        """Seconds and daemon CPU from spawning until every shop holds keyCRM's values."""
        with anyio.fail_after(self.within):
            while not self.fleet.all_pushed():
                await anyio.sleep(0.2)
            while not await self.all_settled(1):
                await anyio.sleep(0.5)  # /status of every merchant costs the daemon: ask seldom
        seconds = time.monotonic() - self.daemon.started_at
        cpu = cpu_seconds(self.daemon.pid)
        unsynced = [s.name for s in self.fleet.shops.values() if not s.synced()]
        if unsynced:
            raise RuntimeError(f"settled but not in sync: {', '.join(unsynced[:5])}")
        return seconds, cpu

    async def resync(self) -> tuple[float, float, int]:
        """SIGUSR1: seconds, daemon CPU and items acknowledged until every item of every
        merchant was pushed again and everything settled."""
        self.tally.mark()
        cpu, started = cpu_seconds(self.daemon.pid), time.monotonic()
        self.daemon.signal(signal.SIGUSR1)
        with anyio.fail_after(self.within):
            while self.tally.count() < self.items:
                await anyio.sleep(0.2)
            while not await self.all_settled(2):
                await anyio.sleep(0.5)
        seconds = time.monotonic() - started
        return seconds, cpu_seconds(self.daemon.pid) - cpu, self.tally.count()


async def _drive(fleet: Fleet, base: str, seconds: float, fresh: Freshness) -> None:
    """One change a second per merchant, the merchants in turn, evenly spread."""
    rng = random.Random(5)
    shops = list(fleet.shops.values())
    offers = {s.name: sorted(s.keycrm.offers.values(), key=lambda o: o.id) for s in shops}
    every = 1.0 / len(shops)
    async with aiohttp.ClientSession() as session, anyio.create_task_group() as posting:
        started = time.monotonic()
        tick, n = started, 0
        while tick < started + seconds:
            shop = shops[n % len(shops)]
            sku = fresh.change(shop, rng.choice(offers[shop.name]))
            posting.start_soon(post_webhook, session, base, shop.token, [sku])
            n += 1
            tick += every
            await anyio.sleep(max(0.0, tick - time.monotonic()))


async def _freshness(fleet: Fleet, daemon: DaemonProcess, seconds: float) -> Freshness:
    fresh = Freshness()
    async with anyio.create_task_group() as watching:

        async def watch() -> None:
            while True:
                fresh.look()
                await anyio.sleep(0.005)

        watching.start_soon(watch)
        await _drive(fleet, daemon.base, seconds, fresh)
        with anyio.fail_after(DEBOUNCE * 10 + 30):
            while fresh.waiting:
                await anyio.sleep(0.05)
        watching.cancel_scope.cancel()
    return fresh


async def _single(options: Options, skus: int) -> tuple[float, int]:
    """A single-merchant daemon (today's one-merchant file) of one merchant's size: its CPU and
    items acknowledged over a resync."""
    fleet = Fleet(1, skus)
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            await fleet.start(stack)
            port = free_port()
            config = fleet.write_single(Path(folder), port)
            daemon = DaemonProcess(config, port, fleet.env, Path(folder) / "daemon.log")
            await daemon.start()
            stack.push_async_callback(daemon.stop)
            run = Run(fleet, daemon, session)
            await run.first_sync()
            _, cpu, items = await run.resync()
    return cpu, items


def _progress(phase: str, seconds: float, cpu: float, pid: int) -> None:
    """A line on stderr as each phase ends: a run cut short still tells how far it got."""
    peak = vm_hwm(pid) / 2**20
    print(
        f"  {phase}: {seconds:,.0f} s, daemon CPU {cpu:,.0f} s, VmHWM {peak:,.0f} MiB",
        file=sys.stderr,
        flush=True,
    )


def _worst_by_phase(probes: list[tuple[float, float, int]], phases: list[tuple[str, float]]) -> str:
    """The worst answer in each phase (a probe counts in the phase it was sent in)."""
    worst: dict[str, float] = {}
    for sent, seconds, status in probes:
        if status != 200:
            continue
        name = next((n for n, start in reversed(phases) if sent >= start), phases[0][0])
        worst[name] = max(worst.get(name, 0.0), seconds)
    return ", ".join(f"{name} {worst[name] * 1000:.0f} ms" for name, _ in phases if name in worst)


async def run(options: Options) -> list[Figure]:
    merchants, skus = options.merchants, options.size(5_000)
    single_cpu, single_items = await _single(options, skus)
    fleet = Fleet(merchants, skus)
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            await fleet.start(stack)
            port = free_port()
            config = fleet.write_merchants(Path(folder), port)
            log = Path(folder) / "daemon.log"
            daemon = DaemonProcess(config, port, fleet.env, log, SERVE)
            await daemon.start()
            stack.push_async_callback(daemon.stop)
            run_ = Run(fleet, daemon, session)
            await daemon.wait_answering(session, within=120)
            prober = Prober(f"{daemon.base}/healthz")
            await prober.start()
            phases = [("first sync", time.monotonic())]
            first_seconds, first_cpu = await run_.first_sync()
            _progress("first sync", first_seconds, first_cpu, daemon.pid)
            phases.append(("resync", time.monotonic()))
            resync_seconds, resync_cpu, items = await run_.resync()
            _progress("resync", resync_seconds, resync_cpu, daemon.pid)
            phases.append(("webhooks", time.monotonic()))
            fresh = await _freshness(fleet, daemon, options.drive(30.0))
            probes = await prober.finish()
            peak = vm_hwm(daemon.pid)
    answered = [seconds for _, seconds, status in probes if status == 200]
    stalls = _worst_by_phase(probes, phases)
    size = f"{merchants:,} merchants x {skus:,} SKUs x 2 channels"
    per_item = resync_cpu / max(1, items)
    single = single_cpu / max(1, single_items)
    figures = [
        Figure(
            "merchants",
            "merchants.peak_memory",
            "daemon peak memory (VmHWM), first sync + resync + webhooks",
            peak,
            "B",
            MEMORY,
            "lower",
            f"{size}, one process, SQLite state folder",
        ),
        Figure(
            "merchants",
            "merchants.healthz_worst",
            "worst /healthz answer, every 20 ms from start to end",
            max(answered, default=0.0),
            "s",
            STALL,
            "lower",
            f"{size}; {len(answered):,} answers; worst by phase: {stalls}",
        ),
        Figure(
            "merchants",
            "merchants.freshness_p99",
            "webhook change to both channels holding it, p99",
            fresh.p99(),
            "s",
            DEBOUNCE + 1.0,
            "lower",
            f"{size}; one change/s per merchant for {options.drive(30.0):g} s, "
            f"{len(fresh.seconds):,} timed; target: the debounce ({DEBOUNCE:g} s) + 1 s",
        ),
        Figure(
            "merchants",
            "merchants.first_sync_seconds",
            "first sync, spawn to every channel holding keyCRM's values",
            first_seconds,
            "s",
            note=f"{size}; daemon CPU {first_cpu:,.0f} s; keyCRM {REQUESTS_PER_MINUTE:,} "
            "requests/min per merchant (the bench measures stocksync, not keyCRM's budget)",
        ),
        Figure(
            "merchants",
            "merchants.resync_seconds",
            "SIGUSR1 resync, signal to every item pushed again and settled",
            resync_seconds,
            "s",
            note=f"{size}; daemon CPU {resync_cpu:,.0f} s",
        ),
        Figure(
            "merchants",
            "merchants.ack_cpu",
            "daemon CPU per acknowledged item over the resync",
            per_item * 1e6,
            "µs",
            note=f"{size}, batches of 100; {items:,} items; single-merchant: {single * 1e6:.1f} µs",
        ),
        Figure(
            "merchants",
            "merchants.ack_cpu_ratio",
            "CPU per acknowledged item, many merchants / single-merchant",
            per_item / single if single else None,
            "x",
            1.0,
            "lower",
            (
                "single-merchant resync too small to measure (under one CPU tick); "
                if not single
                else ""
            )
            + f"single-merchant: today's one-merchant file at one merchant's size "
            f"({skus:,} SKUs x 2 channels), its resync measured the same way",
        ),
    ]
    try:
        figures += await shards.run(options)
    except Skipped as skip:
        raise Skipped(f"sharding figures: {skip.reason}", figures) from None
    return figures
