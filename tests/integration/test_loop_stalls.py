"""The event loop never waits on the store: a resync of 50,000 items keeps /healthz quick."""

from __future__ import annotations

import sqlite3
import time

import aiohttp
import anyio
import pytest

from daemon.shell.daemon import Daemon
from daemon.store import SQLiteStore
from tests.conftest import World, eventually, running
from tests.integration.test_lifecycle import free_port

pytestmark = pytest.mark.anyio

ITEMS = 50_000
STALL_LIMIT = 0.25


async def test_a_big_resync_never_stalls_healthz(world: World) -> None:
    await world.add_shop("pos")
    state = world.tmp_path / "state.db"
    await SQLiteStore(state).close()  # the schema
    db = sqlite3.connect(state)
    with db:
        db.executemany(
            "INSERT INTO items (channel, key, desired, changed_at, acked, acked_at, status) "
            "VALUES ('pos', ?, '{\"q\":3}', 1, '{\"q\":3}', 1, 'ok')",
            ((f'["{n:012d}","S1"]',) for n in range(ITEMS)),
        )
    db.close()
    port = free_port()
    config = world.config(
        listen=f"127.0.0.1:{port}",
        channels=world.shop_table("pos").replace('rate_limit = "1000/s"', 'rate_limit = "1/s"'),
    )
    daemon = Daemon(config, handle_signals=False)
    worst = 0.0
    async with running(daemon), aiohttp.ClientSession() as session:
        await eventually(
            lambda: (
                daemon.parts is not None and daemon.parts.source.progress.last_success is not None
            )
        )
        done = anyio.Event()

        async def probe() -> None:
            nonlocal worst
            while not done.is_set():
                started = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                    assert answer.status == 200
                worst = max(worst, time.perf_counter() - started)
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as group:
            group.start_soon(probe)
            daemon.resync("http")

            async def all_forced() -> bool:
                assert daemon.store is not None
                counts = (await daemon.store.counts()).get("pos", {})
                return counts.get("pending", 0) + counts.get("sending", 0) >= ITEMS - 5

            await eventually(all_forced, timeout=60)
            await anyio.sleep(0.5)  # and the status and metrics of a big queue
            async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
                assert answer.status == 200
            done.set()
    print(f"worst /healthz during a resync of {ITEMS} items: {worst:.3f}s")
    assert worst < STALL_LIMIT, f"/healthz took {worst:.3f}s during the resync"


async def test_a_running_daemon_exports_its_event_loop_lag(world: World) -> None:
    world.keycrm.populate(3)
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        registry = daemon.metrics.registry
        name = "stocksync_event_loop_lag_seconds_count"
        await eventually(lambda: (registry.get_sample_value(name) or 0) >= 2)
