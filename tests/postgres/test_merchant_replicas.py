"""Many merchants sharded over `stocksync run` processes on one PostgreSQL database.

Six merchants, each with its own fake keyCRM and shop. Two replicas lead three each; a third,
started later, receives its share (2, 2, 2) by handover; a SIGKILLed replica's merchants are
led elsewhere within lease_ttl + 5 s and every channel ends equal to its keyCRM; a SIGHUP that
adds a merchant starts it somewhere, one that removes a merchant stops it everywhere.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import anyio.abc
import orjson
import pytest

from bench.pgserver import state_url as url_dsn
from tests.conftest import Serve, eventually
from tests.integration.test_lifecycle import free_port, post_webhook
from tests.integration.test_merchants import Fleet

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(150)]

TTL = 3.0
MERCHANTS = ("m1", "m2", "m3", "m4", "m5", "m6")


class Replicas:
    """`stocksync run` processes serving the fleet's merchants folder from PostgreSQL."""

    def __init__(self, fleet: Fleet, dsn: str) -> None:
        self.fleet = fleet
        self.ports: dict[str, int] = {}
        self.processes: dict[str, anyio.abc.Process] = {}
        fleet.main.write_text(
            f'[daemon]\nmerchants = "merchants"\nstate = "{url_dsn(dsn)}"\n'
            f'lease_ttl = "{TTL:g}s"\nlisten = "127.0.0.1:0"\nshutdown_timeout = "3s"\n',
            encoding="utf-8",
        )

    async def start(self, name: str) -> None:
        port = free_port()
        self.ports[name] = port
        config = self.fleet.tmp_path / f"{name}.toml"
        config.write_text(
            self.fleet.main.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"),
            encoding="utf-8",
        )  # beside the main file: `merchants` names the same folder for every replica
        with (self.fleet.tmp_path / f"{name}.log").open("ab") as log:
            self.processes[name] = await anyio.open_process(
                [sys.executable, "-m", "daemon", "run", "-c", str(config)],
                stdout=log,
                stderr=log,
                env=dict(os.environ),
            )

    async def led(self, name: str) -> set[str] | None:
        """The merchants `name` leads, from its /status (None: it does not answer)."""
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"http://127.0.0.1:{self.ports[name]}/status",
                    timeout=aiohttp.ClientTimeout(2),
                ) as answer,
            ):
                data = orjson.loads(await answer.read())
        except (aiohttp.ClientError, TimeoutError):
            return None
        merchants = data.get("merchants") or {}
        return {m for m, report in merchants.items() if report.get("role") == "leading"}

    async def shares(self, names: tuple[str, ...]) -> dict[str, set[str]] | None:
        shares = {}
        for name in names:
            led = await self.led(name)
            if led is None:
                return None
            shares[name] = led
        return shares

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def evenly(shares: dict[str, set[str]] | None, merchants: set[str]) -> bool:
    """Every merchant led by exactly one of them, and their counts differ by at most one."""
    if shares is None:
        return False
    led = [m for names in shares.values() for m in names]
    counts = [len(names) for names in shares.values()]
    return sorted(led) == sorted(merchants) and max(counts) - min(counts) <= 1


@pytest.fixture
async def replicas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Serve, pg_dsn: str
) -> AsyncIterator[Replicas]:
    fleet = Fleet(tmp_path, monkeypatch, serve)
    for index, name in enumerate(MERCHANTS):
        await fleet.add(name, 6, seed=index)
    group = Replicas(fleet, pg_dsn)
    try:
        yield group
    finally:
        with anyio.CancelScope(shield=True):
            await group.stop()


async def test_replicas_share_merchants_evenly_and_take_over_a_killed_ones(
    replicas: Replicas,
) -> None:
    fleet = replicas.fleet
    everyone = set(MERCHANTS)
    # m7 joins by SIGHUP later; its secrets are in the processes' environment from the start,
    # as a new merchant's secrets must be before a reload can see them.
    added = await fleet.add("m7", 5, seed=7)
    parked = fleet.tmp_path / "m7.toml"
    (fleet.folder / "m7.toml").rename(parked)
    await replicas.start("a")
    await replicas.start("b")
    await eventually(lambda: all(fleet.merchants[m].in_sync() for m in everyone), timeout=40)
    await eventually(lambda: _even(replicas, ("a", "b"), everyone), timeout=20)

    # A replica started later receives its share by handover, within 2 x lease_ttl of joining.
    await replicas.start("c")
    await eventually(lambda: replicas.led("c"), timeout=30)  # it answers (a loaded start-up)
    joined = time.monotonic()
    await eventually(lambda: _even(replicas, ("a", "b", "c"), everyone), timeout=30)
    assert time.monotonic() - joined < 2 * TTL + 2

    # SIGKILL one: its merchants are led elsewhere within lease_ttl + 5 s.
    shares = await replicas.shares(("a", "b", "c"))
    assert shares is not None
    orphans = shares["a"]
    replicas.processes["a"].kill()
    killed = time.monotonic()
    await eventually(lambda: _even(replicas, ("b", "c"), everyone), timeout=30)
    assert time.monotonic() - killed < TTL + 5
    # ... and they sync: a change to each orphan, by webhook to either survivor, arrives.
    for index, name in enumerate(sorted(orphans)):
        merchant = fleet.merchants[name]
        merchant.keycrm.set_stock("SKU-00002", 50.0 + index)
        port = replicas.ports["b" if index % 2 else "c"]
        assert await post_webhook(port, merchant.token, ["SKU-00002"]) == 202
    await eventually(lambda: all(fleet.merchants[m].in_sync() for m in everyone), timeout=30)

    # SIGHUP: a merchant added starts on one survivor, a merchant removed stops on both.
    parked.rename(fleet.folder / "m7.toml")
    (fleet.folder / "m1.toml").unlink()
    for name in ("b", "c"):
        replicas.processes[name].send_signal(signal.SIGHUP)
    wanted = (everyone - {"m1"}) | {"m7"}
    await eventually(lambda: _even(replicas, ("b", "c"), wanted), timeout=30)
    await eventually(added.in_sync, timeout=30)


async def _even(replicas: Replicas, names: tuple[str, ...], merchants: set[str]) -> bool:
    return evenly(await replicas.shares(names), merchants)
