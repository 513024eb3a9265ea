"""Merchants sharded over three `stocksync run` replicas on one PostgreSQL database: how evenly
they share them out, and how fast they share again after a replica dies or joins.

60 merchants (fewer when `--merchants` is smaller) of 200 SKUs x 2 channels each (fewer when
`--skus` is smaller): the share-out is measured, not sync throughput. The fakes are
bench/fleet.py's (one aiohttp server, a path prefix per merchant). Three replicas start together
on one merchants folder (one main file each, the same `[daemon]`, `--lease-ttl`); who leads what
is read from each replica's /status (`merchants` -> `role`), a few times a second:

- steady state: every channel holds its keyCRM's values, then the shares are taken once they have
  not moved for a whole `lease_ttl`; the figure is max - min merchants per replica (target 1);
- a kill: the replica leading the most is SIGKILLed; seconds until the survivors lead every
  merchant, each exactly once, their shares even (target `lease_ttl` + 5 s);
- a join: a fourth replica is started; seconds from its first /healthz answer (it is up and
  beating; its start-up is in the note) until the three lead every merchant evenly again
  (target 2 x `lease_ttl`).
"""

from __future__ import annotations

import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import anyio

from bench.fleet import Fleet
from bench.options import Options
from bench.pgserver import DURABLE, NO_BINARIES, find_bindir, running_server, state_url
from bench.report import Figure, Skipped
from bench.world import DaemonProcess, free_port

__all__ = ["run", "spread"]

MERCHANTS = 60
SKUS = 200
#: how often the replicas' /status are read while waiting for a share-out
POLL = 0.25

Shares = dict[str, set[str]]


def spread(shares: Shares) -> int:
    counts = [len(led) for led in shares.values()]
    return max(counts) - min(counts)


def complete(shares: Shares | None, merchants: set[str]) -> bool:
    """Every merchant led by exactly one of these replicas."""
    if shares is None:
        return False
    led = [m for names in shares.values() for m in names]
    return len(led) == len(set(led)) and set(led) == merchants


def even(shares: Shares | None, merchants: set[str]) -> bool:
    return shares is not None and complete(shares, merchants) and spread(shares) <= 1


class Replicas:
    """The replica processes, each with its own main file, port and log, one merchants folder."""

    def __init__(self, fleet: Fleet, folder: Path, state: str, ttl: float) -> None:
        self.fleet = fleet
        self.folder = folder
        self.keys = f'state = "{state}"\nlease_ttl = "{ttl:g}s"'
        self.daemons: dict[str, DaemonProcess] = {}
        self.live: list[str] = []

    async def start(self, name: str) -> DaemonProcess:
        port = free_port()
        config = self.fleet.write_main(self.folder, port, self.keys, f"{name}.toml")
        daemon = DaemonProcess(config, port, self.fleet.env, self.folder / f"{name}.log")
        await daemon.start()
        self.daemons[name] = daemon
        self.live.append(name)
        return daemon

    async def kill(self, name: str) -> float:
        """SIGKILL; returns the moment of the kill."""
        self.live.remove(name)
        process = self.daemons[name].process
        assert process is not None
        killed_at = time.monotonic()
        process.kill()
        await process.wait()
        return killed_at

    async def shares(self, session: aiohttp.ClientSession) -> Shares | None:
        """The merchants each live replica leads, from its /status (None: one did not answer)."""
        shares: Shares = {}
        for name in self.live:
            status = await self.daemons[name].status(session)
            if status is None:
                return None
            merchants = status.get("merchants") or {}
            shares[name] = {m for m, r in merchants.items() if r.get("role") == "leading"}
        return shares

    async def until_even(self, session: aiohttp.ClientSession, within: float) -> Shares:
        """Polls until the live replicas lead every merchant evenly; the shares then."""
        merchants = set(self.fleet.shops)
        last: Shares | None = None
        with anyio.move_on_after(within):
            while not even(last := await self.shares(session), merchants):
                await anyio.sleep(POLL)
            assert last is not None
            return last
        raise RuntimeError(f"not shared evenly within {within:.0f} s: {_counts(last)}")

    async def steady(self, session: aiohttp.ClientSession, hold: float, within: float) -> Shares:
        """The shares once every merchant is led and nothing has moved for `hold` seconds (at
        `within`, the last complete shares seen: an uneven steady state is a figure)."""
        merchants = set(self.fleet.shops)
        last: Shares | None = None
        since = time.monotonic()
        with anyio.move_on_after(within):
            while True:
                shares = await self.shares(session)
                if not complete(shares, merchants):
                    since = time.monotonic()
                elif shares != last:
                    last, since = shares, time.monotonic()
                elif time.monotonic() - since >= hold:
                    return last
                await anyio.sleep(POLL)
        if last is None:
            raise RuntimeError(f"some merchant never led within {within:.0f} s")
        return last

    async def stop(self) -> None:
        for daemon in self.daemons.values():
            await daemon.stop()


def _counts(shares: Shares | None) -> str:
    if shares is None:
        return "a replica did not answer"
    return ", ".join(f"{name} {len(led)}" for name, led in sorted(shares.items()))


async def run(options: Options) -> list[Figure]:
    bindir = find_bindir()
    if bindir is None:
        raise Skipped(NO_BINARIES)
    merchants, skus = min(options.merchants, MERCHANTS), min(options.size(SKUS), SKUS)
    ttl = options.lease_ttl
    fleet = Fleet(merchants, skus)
    with (
        tempfile.TemporaryDirectory(dir=options.workdir) as folder,
        running_server(bindir, DURABLE) as server,
        server.database() as database,
    ):
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            await fleet.start(stack)
            fleet.write_folder(Path(folder))
            replicas = Replicas(fleet, Path(folder), state_url(server.dsn(database)), ttl)
            stack.push_async_callback(replicas.stop)
            started = time.monotonic()
            for name in ("a", "b", "c"):
                await replicas.start(name)
            with anyio.fail_after(merchants * skus * 2e-3 + 120):
                while not all(shop.synced() for shop in fleet.shops.values()):
                    await anyio.sleep(0.5)
            synced = time.monotonic() - started
            steady = await replicas.steady(session, hold=ttl, within=6 * ttl + 60)

            victim = max(sorted(steady), key=lambda name: len(steady[name]))
            killed_at = await replicas.kill(victim)
            after_kill = await replicas.until_even(session, within=3 * ttl + 60)
            kill_seconds = time.monotonic() - killed_at

            joiner = await replicas.start("d")
            up = await joiner.wait_answering(session, within=120)
            answered_at = time.monotonic()
            after_join = await replicas.until_even(session, within=4 * ttl + 60)
            join_seconds = time.monotonic() - answered_at
    size = f"{merchants} merchants x {skus:,} SKUs x 2 channels, lease_ttl {ttl:g} s"
    return [
        Figure(
            "merchants",
            "merchants.replicas",
            f"three replicas, {merchants} merchants on PostgreSQL: max - min merchants per "
            "replica at steady state",
            spread(steady),
            "merchants",
            1,
            "lower",
            f"{size}; shares {_counts(steady)}; every channel in sync {synced:.0f} s after "
            f"spawning, shares unmoved for lease_ttl",
        ),
        Figure(
            "merchants",
            "merchants.replicas_kill",
            "a replica SIGKILLed: seconds until the survivors lead every merchant, evenly",
            kill_seconds,
            "s",
            ttl + 5,
            "lower",
            f"{size}; killed {victim} ({len(steady[victim])} merchants); then "
            f"{_counts(after_kill)}; target lease_ttl + 5 s",
        ),
        Figure(
            "merchants",
            "merchants.replicas_join",
            "a replica joins: seconds from its first /healthz answer until the shares are even",
            join_seconds,
            "s",
            2 * ttl,
            "lower",
            f"{size}; /healthz answered {up:.1f} s after spawning; then {_counts(after_join)}; "
            "target 2 x lease_ttl",
        ),
    ]
