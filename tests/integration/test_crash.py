"""The crash suite: SIGKILL the real daemon at seeded random moments under change traffic.

Stock changes all the time (webhooks and scans), one channel is slow, another applies requests
and answers late (so a killed daemon's request still lands). The daemon is killed at random
moments and restarted on the same state, on SQLite and on PostgreSQL. At the end, once changes
stop, every channel must equal keyCRM exactly, the look-up queue must be empty, and every SKU of
a webhook answered 2xx must have been looked up after its change (the scans, which would carry
the change anyway, do not count). SQLite's file must pass its integrity check.

On PostgreSQL a restarted process leads only once its killed predecessor's lease has expired
(`lease_ttl`, at least 3 s), so the kills there are fewer: each one lands at a random moment of a
leader's tenure, and between two of them a standby waiting for the lease may be killed too.

`STOCKSYNC_CRASH_SEED` replays a run; `STOCKSYNC_CRASH_KILLS` makes a longer soak.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import anyio
import orjson
import psycopg
import pytest

from adapters import ADAPTERS
from daemon.config.settings import load_config
from daemon.shell.daemon import Daemon
from daemon.store.pg.merchants import DEFAULT_MERCHANT, SCOPE, quoted
from tests.conftest import World, eventually, idle, running
from tests.integration.test_lifecycle import free_port
from tests.integration.test_sync import available, in_sync
from tests.pg import pg_dsn, postgres_server
from tests.postgres.test_ha import url_dsn

__all__ = ["pg_dsn", "postgres_server"]  # fixtures, found by name in this module

pytestmark = pytest.mark.anyio

SEED = int(os.environ.get("STOCKSYNC_CRASH_SEED", "20261124"))
KILLS = int(os.environ.get("STOCKSYNC_CRASH_KILLS", "20"))
#: Leaders killed on PostgreSQL: each costs a lease's expiry (about 3 s) before the next leads.
PG_KILLS = max(1, KILLS // 5)
PG_TTL = "3s"


@dataclass
class Webhooks:
    """Webhooks the daemon answered 2xx: when their SKUs' stock had changed, and which."""

    answered: list[tuple[float, list[str]]] = field(default_factory=list)


async def change_traffic(
    world: World,
    rng: random.Random,
    port: int,
    session: aiohttp.ClientSession,
    webhooks: Webhooks,
) -> None:
    """Change a few SKUs, and tell the daemon about some of them by webhook, forever."""
    offers = list(world.keycrm.offers.values())
    while True:
        changed = rng.sample(offers, rng.randint(1, 5))
        changed_at = time.monotonic()
        for offer in changed:
            quantity = 0.0 if rng.random() < 0.25 else float(rng.randint(1, 30))
            offer.stock = {1: (quantity, float(rng.randint(0, 1)))}
        if rng.random() < 0.7:
            body = orjson.dumps([{"sku": o.sku, "in_stock": 0} for o in changed])
            url = f"http://127.0.0.1:{port}/webhooks/keycrm/{world.webhook_token}"
            try:
                async with session.post(url, data=body, timeout=aiohttp.ClientTimeout(1)) as answer:
                    if answer.status < 300:
                        webhooks.answered.append((changed_at, [o.sku or "" for o in changed]))
            except (aiohttp.ClientError, TimeoutError):
                pass  # not listening yet, or being killed: the scans carry the change
        await anyio.sleep(rng.uniform(0.01, 0.08))


def looked_up_since(world: World, sku: str, since: float) -> bool:
    """Whether the fake keyCRM was asked for `sku` by a targeted look-up at or after `since`."""
    return any(
        at >= since
        and path.endswith("/offers/stocks")
        and sku in query.get("filter[offers_sku]", "").split(",")
        for at, path, query in world.keycrm.requests
    )


class Backend:
    """Where the state lives, and what a kill at a random moment means there."""

    name = "sqlite"
    kills = KILLS

    def __init__(self, world: World) -> None:
        self.world = world

    def configure(self, text: str) -> str:
        return text

    async def kill_moment(
        self, rng: random.Random, role: Callable[[], Awaitable[str | None]]
    ) -> bool:
        """Wait for the moment to kill the process just started; whether it counts as a kill."""
        await anyio.sleep(rng.uniform(0.4, 1.6))
        return True

    def make_due(self) -> None:
        """Pushes that timed out on a loaded machine may wait out a long backoff: make them
        due now (only their timing: what the state says each channel holds is left alone)."""
        db = sqlite3.connect(self.world.tmp_path / "state.db")
        with db:
            db.execute("UPDATE items SET next_attempt = 0, due_at = 0 WHERE status = 'pending'")
        db.close()

    def queued(self) -> list[tuple[object, ...]]:
        """The look-up queue's rows: SKUs a webhook named that no look-up has answered yet."""
        db = sqlite3.connect(self.world.tmp_path / "state.db")
        try:
            return db.execute("SELECT sku, claimed_by FROM lookup_queue").fetchall()
        finally:
            db.close()

    def check(self) -> None:
        db = sqlite3.connect(self.world.tmp_path / "state.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            db.close()


class Postgres(Backend):
    name = "postgresql"
    kills = PG_KILLS

    def __init__(self, world: World, dsn: str) -> None:
        super().__init__(world)
        self.dsn = dsn

    def configure(self, text: str) -> str:
        sqlite_state = f'state = "{self.world.tmp_path / "state.db"}"'
        assert sqlite_state in text
        return text.replace(sqlite_state, f'state = "{url_dsn(self.dsn)}"\nlease_ttl = "{PG_TTL}"')

    async def kill_moment(
        self, rng: random.Random, role: Callable[[], Awaitable[str | None]]
    ) -> bool:
        """A leader's, at a random moment of its tenure; or, now and then, a standby's while it
        waits out its predecessor's lease (which costs no time, and counts no kill)."""
        if rng.random() < 0.4:
            await anyio.sleep(rng.uniform(0.3, 1.5))
            if await role() != "leader":
                return False
        await eventually(lambda: _is(role, "leader"), timeout=20)
        await anyio.sleep(rng.uniform(0.05, 1.2))
        return True

    def make_due(self) -> None:
        with psycopg.connect(self.dsn) as db:
            db.execute("SELECT " + SCOPE, (quoted(DEFAULT_MERCHANT),))  # the merchant's tables
            db.execute("UPDATE items SET next_attempt = 0, due_at = 0 WHERE status = 'pending'")

    def queued(self) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn) as db:
            db.execute("SELECT " + SCOPE, (quoted(DEFAULT_MERCHANT),))
            return db.execute("SELECT sku, claimed_epoch FROM lookup_queue").fetchall()

    def check(self) -> None:
        pass  # PostgreSQL checks its own pages; what matters is in the tables, checked above


async def _is(role: Callable[[], Awaitable[str | None]], wanted: str) -> bool:
    return await role() == wanted


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, world: World) -> Backend:
    if request.param == "sqlite":
        return Backend(world)
    return Postgres(world, request.getfixturevalue("pg_dsn"))


@pytest.mark.timeout(240)
async def test_sigkill_at_random_moments_loses_nothing(
    world: World, backend: Backend, tmp_path: Path
) -> None:
    traffic_rng, kill_rng = random.Random(SEED), random.Random(SEED + 1)
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
    text = path.read_text().replace('poll_interval = "1h"', 'poll_interval = "300ms"')
    path.write_text(backend.configure(text))
    webhooks = Webhooks()
    log = (tmp_path / "daemon.log").open("ab")
    try:
        async with aiohttp.ClientSession() as session, anyio.create_task_group() as traffic:
            traffic.start_soon(change_traffic, world, traffic_rng, port, session, webhooks)

            async def role() -> str | None:
                try:
                    url = f"http://127.0.0.1:{port}/status"
                    async with session.get(url, timeout=aiohttp.ClientTimeout(1)) as answer:
                        replica = orjson.loads(await answer.read()).get("replica")
                except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                    return None
                return replica.get("role") if isinstance(replica, dict) else None

            kills = 0
            while kills < backend.kills:
                process = await anyio.open_process(
                    [sys.executable, "-m", "daemon", "run", "-c", str(path)],
                    stdout=log,
                    stderr=log,
                )
                try:
                    kills += await backend.kill_moment(kill_rng, role)
                finally:
                    process.kill()
                    await process.wait()
            traffic.cancel_scope.cancel()
    finally:
        log.close()
    # Changes stop; a last daemon must bring every channel to keyCRM's values exactly.
    backend.make_due()
    final = world.write_config()
    final.write_text(backend.configure(final.read_text()))
    daemon = Daemon(load_config(final, ADAPTERS), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: daemon.parts is not None, timeout=20)  # leads (PostgreSQL)
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
            for record in await daemon.store.records(limit=1000):
                stored = max(0, int(record.stock.quantity - record.stock.reserve))
                if stored != available(world, record.sku):
                    print("RECORD", record.sku, stored, record.stock)
            for row in await daemon.store.items():
                if row.status != "ok":
                    print("ITEM", row)
            print("COUNTS", await daemon.store.counts())
            raise
        # Every webhook answered 2xx was looked up after its change, whatever the kills did.
        await eventually(
            lambda: all(
                looked_up_since(world, sku, at) for at, skus in webhooks.answered for sku in skus
            ),
            timeout=20,
        )
        await eventually(lambda: not backend.queued(), timeout=20)
    backend.check()
    assert webhooks.answered, "no webhook was ever answered: the suite tests nothing"
    restarts = (tmp_path / "daemon.log").read_bytes().count(b"daemon.recovered_in_flight")
    assert restarts > 0, "no kill ever caught a push in flight: the suite tests nothing"
