"""PostgreSQL restarts under webhook traffic, end to end: two `stocksync run` replicas on a server
of their own that is stopped and started again, three times.

No replica exits; every webhook is answered 202 or 503 within 5 s (never 500, never a
traceback); `/readyz` is 503 on both replicas during each outage and 200 after; every SKU whose
last webhook was answered 202 reaches the channel with the stock of that change.

And in process, a crash of the server (`stop("immediate")`): the claims and acknowledgements it
may lose (they commit without waiting for the WAL's flush) are pushed again, while every desired
value committed before the crash stays.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import anyio
import orjson
import psycopg
import pytest

from bench.pgserver import THROWAWAY, PostgresServer, find_bindir, running_server
from daemon.core.models import Outcome, Value, Verdict
from daemon.store import Timing
from daemon.store.pg.backend import PostgresStore
from tests.conftest import World, eventually
from tests.postgres.test_ha import Replicas, leader_elected

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

OUTAGES = ("fast", "immediate", "fast")
OUTAGE_SECONDS = 5.0
#: the webhook's promise: an answer within 5 s whatever the database does
ANSWER_WITHIN = 5.0


@pytest.fixture
async def two_replicas(world: World, own_server: PostgresServer) -> AsyncIterator[Replicas]:
    world.keycrm.populate(30)
    await world.add_shop("pos")
    with own_server.database() as name:
        group = Replicas(world, own_server.dsn(name))
        try:
            yield group
        finally:
            with anyio.CancelScope(shield=True):
                await group.stop()


@dataclass
class Traffic:
    """Webhooks sent so far: (replica, sku, quantity, status, seconds to the answer)."""

    answers: list[tuple[str, str, int, int, float]] = field(default_factory=list)

    def last_accepted(self) -> dict[str, int]:
        """The quantity of each SKU's last change, for SKUs whose last webhook was a 202."""
        last: dict[str, tuple[int, int]] = {}
        for _name, sku, quantity, status, _took in self.answers:
            last[sku] = (quantity, status)
        return {sku: q for sku, (q, status) in last.items() if status == 202}


async def send(
    world: World,
    replicas: Replicas,
    name: str,
    skus: list[str],
    traffic: Traffic,
    stop: anyio.Event,
) -> None:
    """One change and its webhook to replica `name` after another (every 50 ms once answered),
    until `stop`. Each sender has SKUs of its own, so the order of its answers is the order of
    the changes; it stops between two, so every change it made has its answer recorded."""
    timeout = aiohttp.ClientTimeout(total=15)
    url = f"http://127.0.0.1:{replicas.ports[name]}/webhooks/keycrm/{world.webhook_token}"
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for n in itertools.count():
            if stop.is_set():
                return
            sku, quantity = skus[n % len(skus)], 100 + n
            world.keycrm.set_stock(sku, quantity)
            started = time.monotonic()
            async with session.post(url, data=orjson.dumps([{"sku": sku}])) as answer:
                await answer.read()
                status = answer.status
            traffic.answers.append((name, sku, quantity, status, time.monotonic() - started))
            await anyio.sleep(0.05)


async def readyz(replicas: Replicas, name: str) -> int:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"http://127.0.0.1:{replicas.ports[name]}/readyz") as answer,
        ):
            return answer.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def all_ready(replicas: Replicas, status: int) -> bool:
    return all([await readyz(replicas, name) == status for name in replicas.ports])


def none_exited(replicas: Replicas) -> None:
    exited = {n: p.returncode for n, p in replicas.processes.items() if p.returncode is not None}
    assert not exited, f"replicas exited: {exited}"


async def test_postgresql_restarts_under_webhook_traffic_lose_nothing_and_kill_no_replica(
    world: World, own_server: PostgresServer, two_replicas: Replicas
) -> None:
    replicas = two_replicas
    for name in ("a", "b"):
        await replicas.start(name)
    await leader_elected(replicas)
    await eventually(lambda: all_ready(replicas, 200), timeout=20)
    traffic, stop = Traffic(), anyio.Event()
    async with anyio.create_task_group() as tg:
        skus = [f"SKU-{n:05d}" for n in range(1, 31)]
        tg.start_soon(send, world, replicas, "a", skus[:15], traffic, stop)
        tg.start_soon(send, world, replicas, "b", skus[15:], traffic, stop)
        for mode in OUTAGES:
            await anyio.sleep(1.0)  # traffic on a healthy database first
            # In a thread: pg_ctl waits, and the senders' clocks must not stop meanwhile.
            await anyio.to_thread.run_sync(own_server.stop, mode)
            down = time.monotonic()
            try:
                # Both replicas say they cannot serve, each within a few seconds of the outage.
                await eventually(lambda: all_ready(replicas, 503), timeout=OUTAGE_SECONDS)
                # Longer than a webhook waits for its write: some are answered 503.
                await anyio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down)))
            finally:
                await anyio.to_thread.run_sync(own_server.start)
            none_exited(replicas)
            await eventually(lambda: all_ready(replicas, 200), timeout=20)
        await anyio.sleep(1.0)
        stop.set()
    none_exited(replicas)
    await leader_elected(replicas)

    statuses = {status for *_rest, status, _took in traffic.answers}
    assert statuses <= {202, 503}, f"answers other than 202/503: {statuses}"
    assert 503 in statuses and 202 in statuses
    slowest = max(took for *_rest, took in traffic.answers)
    assert slowest < ANSWER_WITHIN, f"a webhook took {slowest:.1f}s to be answered"

    pos = world.shops["pos"]
    wanted = traffic.last_accepted()
    assert wanted

    def missing() -> dict[str, tuple[object, object]]:
        """SKU: (the channel's quantity, the one its last accepted change asked for)."""
        found: dict[str, tuple[object, object]] = {}
        for sku, quantity in wanted.items():
            offer = world.keycrm.by_sku(sku)
            held = pos.quantity(offer.barcode or "", "S1")
            if held != quantity - offer.reserve:
                found[sku] = (held, quantity - offer.reserve)
        return found

    with contextlib.suppress(TimeoutError):
        await eventually(lambda: not missing(), timeout=30)
    assert not missing(), f"accepted changes that never reached the channel: {missing()}"
    for name in replicas.processes:
        log = (world.tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in log, f"{name} logged a traceback:\n{log[-3000:]}"
        assert '"logger":"psycopg.pool"' not in log  # not a line per reconnection attempt
        episodes = log.count('"store.unavailable"')
        assert 1 <= episodes <= len(OUTAGES), f"{name}: {episodes} store.unavailable lines"


async def test_a_server_crash_takes_back_no_claim_and_no_acknowledgement() -> None:
    """A claim and an acknowledgement go to the server with their commit in one round trip; the
    commit must still wait for the WAL's flush. A claim a crash took back would let a second
    request for the item leave while the first is on the wire (an older value could land
    last); an acknowledgement it took back would leave the item `sending` with no request
    carrying it, its next change stuck behind it until the next start."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries")
    timing = Timing(debounce=0.0, max_delay=1.0)

    def acknowledge(key: str, quantity: int) -> list[Verdict]:
        return [Verdict(key, Value(quantity=quantity), Outcome.ACKNOWLEDGED)]

    # Commits reach the kernel when they are acknowledged, and the WAL writer waits 10 s: a
    # transaction that commits without waiting for the flush is lost in a crash within that time.
    settings = {**THROWAWAY, "synchronous_commit": "on", "wal_writer_delay": "10000"}
    with running_server(bindir, settings) as server, server.database() as name:
        store = await PostgresStore.open(server.dsn(name))
        await store.set_desired("c", {"a": Value(quantity=1), "b": Value(quantity=2)}, 1.0, timing)
        assert [i.key for i in await store.claim("c", 2.0, 1)] == ["a"]
        await store.settle("c", acknowledge("a", 1), 2.0, timing, lambda _n: 1.0)
        assert [i.key for i in await store.claim("c", 3.0, 1)] == ["b"]  # the last commit
        await anyio.to_thread.run_sync(server.stop, "immediate")
        await store.close()
        await anyio.to_thread.run_sync(server.start)

        store = await PostgresStore.open(server.dsn(name))
        try:
            rows = {row.key: row for row in await store.items("c")}
            assert {k: (r.status, r.desired, r.acked) for k, r in rows.items()} == {
                "a": ("ok", Value(quantity=1), Value(quantity=1)),
                "b": ("sending", Value(quantity=2), None),
            }
        finally:
            await store.close()
        with psycopg.connect(server.dsn(name)) as conn:  # the acknowledgement's history row too
            rows = conn.execute("SELECT key, outcome FROM stocksync_default.history").fetchall()
        assert rows == [("a", "ok")]
