"""What only the PostgreSQL store has: fenced writes, and calls running side by side.

The lifecycle itself is checked over both backends by tests/store/test_contract.py.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from daemon.core.errors import StateUnusable, StoreUnavailable
from daemon.core.models import Outcome, Value, Verdict
from daemon.replicas.leader import LeaseKeeper
from daemon.store import Timing
from daemon.store.pg.backend import PostgresStore
from daemon.store.pg.connect import Pool
from daemon.store.pg.lease import LeaseLost

pytestmark = pytest.mark.anyio

T = Timing(debounce=0.0, max_delay=30.0)


def backoff(_attempt: int) -> float:
    return 5.0


async def test_a_replica_that_lost_the_lease_writes_nothing(pool: Pool) -> None:
    now = [1000.0]
    old = LeaseKeeper(pool, "acme", "old", ttl=10.0, clock=lambda: now[0])
    assert await old.step() is not None
    store = PostgresStore(pool, fence=old.lease)
    await store.set_desired("c", {"k": Value(quantity=1)}, 1.0, T)
    assert [i.key for i in await store.claim("c", 2.0, 10)] == ["k"]

    now[0] += 9  # paused past the lease on its own clock: refused before reaching the database
    with pytest.raises(LeaseLost):
        await store.set_desired("c", {"k": Value(quantity=2)}, 3.0, T)

    async with pool.connection() as conn:  # the database takes the lease from it meanwhile
        await conn.execute("UPDATE leases SET expires_at = clock_timestamp()")
    new = LeaseKeeper(pool, "acme", "new", ttl=10.0)
    new_lease = await new.step()
    assert new_lease is not None and new_lease.epoch == 2
    now[0] -= 9  # even if its clock said otherwise, the database refuses the old epoch
    ack = Verdict("k", Value(quantity=1), Outcome.ACKNOWLEDGED)
    with pytest.raises(LeaseLost):
        await store.settle("c", [ack], 4.0, T, backoff)
    with pytest.raises(LeaseLost):
        await store.set_meta("x", "y")

    leader = PostgresStore(pool, fence=new.lease)
    (row,) = await leader.items("c")  # reads need no lease; nothing of the old leader's landed
    assert row.status == "sending" and row.desired == Value(quantity=1)
    await leader.settle("c", [ack], 5.0, T, backoff)
    assert [r.status for r in await leader.items("c")] == ["ok"]


async def test_a_fenced_claim_sent_with_its_commit_claims_nothing(pool: Pool) -> None:
    """A claim and a push's acknowledgement go to the server with their commit, before the
    fence is answered: a replica the database no longer takes as leader must still claim and
    acknowledge nothing, and learn that it lost the lease."""
    old = LeaseKeeper(pool, "acme", "old", ttl=10.0)
    assert await old.step() is not None
    store = PostgresStore(pool, fence=old.lease)
    await store.set_desired("c", {"k": Value(quantity=1)}, 1.0, T)
    await store.set_desired("c", {"j": Value(quantity=2)}, 1.5, T)
    assert [i.key for i in await store.claim("c", 2.0, 1)] == ["k"]
    async with pool.connection() as conn:  # another replica takes the lease meanwhile
        await conn.execute("UPDATE leases SET expires_at = clock_timestamp()")
    new = LeaseKeeper(pool, "acme", "new", ttl=10.0)
    assert await new.step() is not None

    with pytest.raises(LeaseLost):
        await store.claim("c", 3.0, 10)
    with pytest.raises(LeaseLost):
        await store.settle("c", [Verdict("k", Value(quantity=1), Outcome.ACKNOWLEDGED)], 3.0, T,
                           backoff)  # fmt: skip
    rows = {row.key: row.status for row in await PostgresStore(pool, fence=new.lease).items("c")}
    assert rows == {"j": "pending", "k": "sending"}
    assert await store.history("k") == []


async def test_concurrent_claims_never_hand_out_an_item_twice(pool: Pool) -> None:
    store = PostgresStore(pool)
    await store.set_desired("c", {f"k{n:03d}": Value(quantity=n) for n in range(120)}, 1.0, T)
    await store.set_desired("d", {f"k{n:03d}": Value(quantity=n) for n in range(30)}, 1.0, T)
    claimed: list[tuple[str, str]] = []

    async def claimer(channel: str) -> None:
        while batch := await store.claim(channel, 2.0, 7):
            claimed.extend((channel, item.key) for item in batch)

    async with anyio.create_task_group() as tg:
        for channel in ("c", "c", "c", "c", "d", "d"):
            tg.start_soon(claimer, channel)
    assert len(claimed) == len(set(claimed)) == 150
    counts = await store.counts()
    assert counts == {"c": {"sending": 120}, "d": {"sending": 30}}


async def test_connections_that_died_in_a_failover_are_replaced_unnoticed(pool: Pool) -> None:
    store = PostgresStore(pool)
    await store.set_desired("c", {"k": Value(quantity=1)}, 1.0, T)
    async with await connect_to(pool) as admin:  # the server drops every other session
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert [i.key for i in await store.claim("c", 2.0, 10)] == ["k"]
    assert store.health.reason is None


async def test_an_unreachable_database_is_a_store_fault_that_readiness_can_show(
    tmp_path: Path,
) -> None:
    pool: Pool = AsyncConnectionPool(
        f"host={tmp_path} dbname=none", open=False, timeout=0.3, min_size=0, max_size=1
    )
    await pool.open(wait=False)
    try:
        store = PostgresStore(pool, location="db.example/stocksync")
        with pytest.raises(StoreUnavailable) as caught:
            await store.set_desired("c", {"k": Value(quantity=1)}, 1.0, T)
        assert caught.value.operation == "write"
        assert store.health.reason is not None and "cannot write" in store.health.reason
        with pytest.raises(StoreUnavailable):
            await store.items()
    finally:
        await pool.close()
    with pytest.raises(StateUnusable, match="cannot reach the database"):
        await PostgresStore.open(f"host={tmp_path} dbname=none", acquire_timeout=0.3)


async def connect_to(pool: Pool) -> AsyncConnection[TupleRow]:
    return await AsyncConnection.connect(pool.conninfo, autocommit=True)
