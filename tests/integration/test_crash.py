"""The crash suite: SIGKILL the real daemon at seeded random moments under change traffic.

Stock changes all the time (webhooks and scans), one channel is slow, another applies requests
and answers late (so a killed daemon's request still lands). The daemon is killed at random
moments, at least 20 times, and restarted on the same state. At the end, once changes stop,
every channel must equal keyCRM exactly and the state file must pass SQLite's integrity check.

`STOCKSYNC_CRASH_SEED` replays a run; `STOCKSYNC_CRASH_KILLS` makes a longer soak.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
from pathlib import Path

import aiohttp
import anyio
import orjson
import pytest

from daemon.pipeline import Daemon
from tests.conftest import World, eventually, idle, running
from tests.integration.test_lifecycle import free_port
from tests.integration.test_sync import available, in_sync

pytestmark = pytest.mark.anyio

SEED = int(os.environ.get("STOCKSYNC_CRASH_SEED", "20261124"))
KILLS = int(os.environ.get("STOCKSYNC_CRASH_KILLS", "20"))


async def change_traffic(
    world: World, rng: random.Random, port: int, session: aiohttp.ClientSession
) -> None:
    """Change a few SKUs, and tell the daemon about some of them by webhook, forever."""
    offers = list(world.keycrm.offers.values())
    while True:
        changed = rng.sample(offers, rng.randint(1, 5))
        for offer in changed:
            quantity = 0.0 if rng.random() < 0.25 else float(rng.randint(1, 30))
            offer.stock = {1: (quantity, float(rng.randint(0, 1)))}
        if rng.random() < 0.7:
            body = orjson.dumps([{"sku": o.sku, "in_stock": 0} for o in changed])
            url = f"http://127.0.0.1:{port}/webhooks/keycrm/{world.webhook_token}"
            try:
                async with session.post(url, data=body, timeout=aiohttp.ClientTimeout(1)):
                    pass
            except (aiohttp.ClientError, TimeoutError):
                pass  # not listening yet, or being killed: the scans carry the change
        await anyio.sleep(rng.uniform(0.01, 0.08))


@pytest.mark.timeout(240)
async def test_sigkill_at_random_moments_loses_nothing(world: World, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    world.keycrm.populate(80)
    pos = await world.add_shop("pos")
    pos.faults.delay = 0.005  # some latency on every request
    late = await world.add_shop("late")
    late.answer_delay = 0.15  # applies at once, answers late: killed clients' pushes land
    port = free_port()
    path = world.write_config(
        listen=f"127.0.0.1:{port}",
        sync='debounce = "20ms"\nmax_delay = "200ms"\nguard_fraction = 1.0',
    )
    path.write_text(path.read_text().replace('poll_interval = "1h"', 'poll_interval = "300ms"'))
    log = (tmp_path / "daemon.log").open("ab")
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(KILLS):
                process = await anyio.open_process(
                    [sys.executable, "-m", "daemon", "run", "-c", str(path)],
                    stdout=log,
                    stderr=log,
                )
                try:
                    with anyio.move_on_after(rng.uniform(0.4, 1.6)):
                        await change_traffic(world, rng, port, session)
                finally:
                    process.kill()
                    await process.wait()
    finally:
        log.close()
    # Changes stop; a last daemon must bring every channel to keyCRM's values exactly. Pushes
    # that timed out on a loaded machine may be waiting out a long backoff: make them due now
    # (only their timing: what the state says each channel holds is left as it is).
    db = sqlite3.connect(world.tmp_path / "state.db")
    with db:
        db.execute("UPDATE items SET next_attempt = 0, due_at = 0 WHERE status = 'pending'")
    db.close()
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        assert daemon.parts is not None
        daemon.parts.source.request_scan()
        try:
            await eventually(
                lambda: in_sync(world, "pos") and in_sync(world, "late") and idle(daemon),
                timeout=60,
            )
        except TimeoutError:  # say what differs, for whoever reads the failure
            for shop in ("pos", "late"):
                fake = world.shops[shop]
                for o in world.keycrm.offers.values():
                    have = fake.quantity(o.barcode or "", "S1")
                    if have != available(world, o.sku or ""):
                        print("MISMATCH", shop, o.sku, have, available(world, o.sku or ""))
            assert daemon.store is not None
            for row in await daemon.store.items():
                if row.status != "ok":
                    print("ITEM", row)
            print("COUNTS", await daemon.store.counts())
            raise
    db = sqlite3.connect(world.tmp_path / "state.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    restarts = (tmp_path / "daemon.log").read_bytes().count(b"daemon.recovered_in_flight")
    assert restarts > 0, "no kill ever caught a push in flight: the suite tests nothing"
