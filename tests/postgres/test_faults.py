"""Every PostgreSQL error is `StoreUnavailable`, counted once per episode: `daemon.store.pg.faults`,
and the places that used to let one escape (the leader's work, a cleanup after a failed look-up)."""

from __future__ import annotations

import subprocess
import sys
import time

import anyio
import psycopg
import pytest
from psycopg_pool import PoolTimeout
from structlog.testing import capture_logs

from daemon.core.errors import SourceRetryable, StoreUnavailable
from daemon.replicas.leader import LeaseKeeper
from daemon.replicas.replica import Replica
from daemon.store.health import StoreHealth
from daemon.store.pg import lookups
from daemon.store.pg.connect import Pool, open_pool
from daemon.store.pg.faults import Database
from daemon.store.pg.lease import Lease
from tests.pg import PostgresServer, until

pytestmark = pytest.mark.anyio

M = "acme"


def counted() -> tuple[StoreHealth, list[str]]:
    errors: list[str] = []
    return StoreHealth("test", on_error=errors.append), errors


async def a_statement_on_an_ended_session(db: Database, pg_dsn: str) -> None:
    """What a restart does to a statement: the server ends the session under it."""
    async with db.connection("write") as conn:
        cursor = await conn.execute("SELECT pg_backend_pid()")
        row = await cursor.fetchone()
        assert row is not None
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        await conn.execute("SELECT 1")


async def test_a_session_ended_by_the_server_is_store_unavailable_once_per_episode(
    pool: Pool, pg_dsn: str
) -> None:
    health, errors = counted()
    db = Database(pool, health)
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(StoreUnavailable) as raised:
                await a_statement_on_an_ended_session(db, pg_dsn)
            assert isinstance(raised.value.__cause__, psycopg.OperationalError)
            assert raised.value.operation == "write"
        assert health.reason is not None and "write" in health.reason
        async with db.connection("write") as conn:  # the pool replaced the dead connection
            await conn.execute("SELECT 1")
    assert errors == ["write", "write"]
    assert health.reason is None
    events = [entry["event"] for entry in logs]
    assert events.count("store.unavailable") == 1
    assert events.count("store.recovered") == 1


async def test_a_pool_that_cannot_hand_out_a_connection_in_time_is_store_unavailable(
    pg_dsn: str,
) -> None:
    small = await open_pool(pg_dsn, max_size=1)
    health, errors = counted()
    db = Database(small, health)
    try:
        async with small.connection():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                async with db.connection("read", wait=0.2):
                    pass
        assert time.monotonic() - started < 2
        assert isinstance(raised.value.__cause__, PoolTimeout)
        assert errors == ["read"]
    finally:
        await small.close()


async def test_a_server_back_after_a_long_outage_is_reconnected_at_once(
    own_server: PostgresServer,
) -> None:
    """The pool's retry delay doubles while the server is away (1, 2, 4, 8 s...); without a
    bound, a server back after 7.5 s would wait for the attempt at 15 s."""
    with own_server.database() as name:
        small = await open_pool(own_server.dsn(name), max_size=1, acquire_timeout=1.0)
        db = Database(small, StoreHealth("test"))
        try:

            async def works() -> bool:
                try:
                    async with db.connection("read", wait=0.2) as conn:
                        await conn.execute("SELECT 1")
                except StoreUnavailable:
                    return False
                return True

            assert await works()
            own_server.stop("immediate")
            down = time.monotonic()
            while time.monotonic() - down < 7.5:
                assert not await works()
                await anyio.sleep(0.1)
            own_server.start()
            back = time.monotonic()
            while not await works():
                assert time.monotonic() - back < 3, "the pool did not reconnect within 3 s"
                await anyio.sleep(0.1)
        finally:
            await small.close()


async def test_work_failing_with_store_unavailable_starts_again_under_the_same_lease(
    pool: Pool,
) -> None:
    keeper = LeaseKeeper(pool, M, "a", ttl=1.5)
    assert await keeper.step() is not None
    calls: list[int] = []
    again = anyio.Event()

    async def work(lease: Lease) -> None:
        calls.append(lease.epoch)
        if len(calls) == 1:
            raise StoreUnavailable("state store write: AdminShutdown", operation="write")
        again.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        tg.start_soon(keeper.lead, work)
        with anyio.fail_after(5):
            await again.wait()
        assert calls == [1, 1]  # the process goes on, and so does its leadership
        assert keeper.leading()
        tg.cancel_scope.cancel()


async def test_work_ended_by_the_local_deadline_starts_again_if_a_late_renewal_keeps_the_epoch(
    pool: Pool,
) -> None:
    """A renewal that waited through an outage may land after our own clock ended the lease but
    before the database's did: the epoch goes on, and so must the work (it waited for a change
    that `_note` never saw, and the merchant had no leader until the process restarted)."""
    keeper = LeaseKeeper(pool, M, "a", ttl=5.0, margin=4.7)  # ours ends at 0.3 s, the db's at 5
    assert await keeper.step() is not None
    starts: list[int] = []
    ended = anyio.Event()

    async def work(lease: Lease) -> None:
        starts.append(lease.epoch)
        try:
            await anyio.sleep_forever()
        finally:
            ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.lead, work)
        with anyio.fail_after(5):
            await ended.wait()  # the local deadline passed: no pushes now
        assert not keeper.leading()
        assert await keeper.step() is not None  # the late renewal: same epoch, still ours

        async def restarted() -> bool | None:
            return True if len(starts) == 2 else None

        await until(restarted, timeout=2)
        assert starts == [1, 1]
        tg.cancel_scope.cancel()


async def test_a_failed_unclaim_does_not_replace_the_look_ups_error(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = await Replica.open(pg_dsn, M, ttl=30.0, holder="a", max_size=2)
    try:
        lease = await replica.keeper.step()
        assert lease is not None
        await replica.enqueue(M, ["A"])

        async def unclaim(*_args: object) -> None:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(lookups, "unclaim", unclaim)

        async def handle(_skus: list[str]) -> None:
            raise SourceRetryable("keyCRM answered 503")

        with pytest.raises(SourceRetryable):
            await replica.consume_lookups(lease, handle)
        assert replica.health.reason is not None  # the cleanup's failure is counted, not lost

        async def queued() -> bool | None:
            async with replica.pool.connection() as conn:
                cursor = await conn.execute("SELECT count(*) FROM lookup_queue")
                row = await cursor.fetchone()
            return True if row is not None and row[0] == 1 else None

        await until(queued, timeout=2)  # still queued: the next leader or a reclaim takes it
    finally:
        await replica.pool.close()


@pytest.mark.parametrize(
    "module", ["daemon.store.pg.faults", "daemon.replicas.leader", "daemon.replicas.replica"]
)
def test_each_module_imports_first_in_a_fresh_process(module: str) -> None:
    """The store's package imports `daemon.store.pg.faults`: an import cycle shows only when a
    process imports one of these before `daemon.store` (a contender, a tool)."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
