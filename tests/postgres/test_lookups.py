"""The durable look-up queue: any replica enqueues, the leader claims, looks up, and deletes."""

from __future__ import annotations

import anyio
import pytest

from daemon.store.pg import lease as leases
from daemon.store.pg import lookups
from daemon.store.pg.connect import Pool
from daemon.store.pg.lease import Lease, LeaseLost
from daemon.store.pg.lookups import Wakeup
from tests.pg import until

pytestmark = pytest.mark.anyio

M = "acme"


async def take(pool: Pool, holder: str = "leader", ttl: float = 30.0) -> Lease:
    async with pool.connection() as conn:
        lease = await leases.acquire(conn, M, holder, ttl)
    assert lease is not None
    return lease


async def enqueue(pool: Pool, *skus: str, merchant: str = M) -> int:
    async with pool.connection() as conn:
        return await lookups.enqueue(conn, merchant, skus)


async def claim(
    pool: Pool, lease: Lease, limit: int = 50, reclaim_after: float = 60.0
) -> list[lookups.Claimed]:
    async with pool.connection() as conn:
        return await lookups.claim(conn, lease, limit, reclaim_after)


async def done(pool: Pool, lease: Lease, claimed: list[lookups.Claimed]) -> int:
    async with pool.connection() as conn:
        return await lookups.done(conn, lease, claimed)


async def test_entries_are_claimed_oldest_first_once_and_deleted_when_done(pool: Pool) -> None:
    lease = await take(pool)
    assert await enqueue(pool, "A", "B", "A") == 2  # one entry per SKU
    assert await enqueue(pool, "C") == 1
    first = await claim(pool, lease, limit=2)
    assert [c.sku for c in first] == ["A", "B"]
    second = await claim(pool, lease)
    assert [c.sku for c in second] == ["C"]  # claimed entries are not handed out twice
    assert await claim(pool, lease) == []
    assert await done(pool, lease, first) == 2
    async with pool.connection() as conn:
        assert (await lookups.depth(conn, M))[0] == 1
        assert (await lookups.depth(conn, "other"))[0] == 0


async def test_a_sku_enqueued_again_during_its_lookup_stays_queued(pool: Pool) -> None:
    lease = await take(pool)
    await enqueue(pool, "A", "B")
    claimed = await claim(pool, lease)
    await enqueue(pool, "A")  # a webhook while the look-up is in flight: it may be stale
    assert await done(pool, lease, claimed) == 1
    again = await claim(pool, lease)
    assert [c.sku for c in again] == ["A"]


async def test_a_dead_leaders_claims_come_back_and_a_failed_lookup_unclaims(pool: Pool) -> None:
    lease = await take(pool)
    await enqueue(pool, "A", "B")
    claimed = await claim(pool, lease)
    assert await claim(pool, lease) == []
    back = await until(lambda: _reclaimed(pool, lease))
    assert sorted(c.sku for c in back) == ["A", "B"]
    async with pool.connection() as conn:
        await lookups.unclaim(conn, lease, claimed[:1])
    assert [c.sku for c in await claim(pool, lease)] == [claimed[0].sku]


async def _reclaimed(pool: Pool, lease: Lease) -> list[lookups.Claimed] | None:
    return await claim(pool, lease, reclaim_after=0.2) or None


async def test_a_stale_leader_can_neither_claim_nor_drop_entries(pool: Pool) -> None:
    old = await take(pool, "old", ttl=0.3)
    await enqueue(pool, "A")
    claimed = await claim(pool, old)
    new = await until(lambda: _acquire(pool, "new"))
    with pytest.raises(LeaseLost):
        await done(pool, old, claimed)
    with pytest.raises(LeaseLost):
        await claim(pool, old)
    async with pool.connection() as conn:
        assert (await lookups.depth(conn, M))[0] == 1
    # claimed under the dead epoch: the new leader takes it at once, without waiting
    assert [c.sku for c in await claim(pool, new)] == ["A"]


async def _acquire(pool: Pool, holder: str) -> Lease | None:
    async with pool.connection() as conn:
        return await leases.acquire(conn, M, holder, 30.0)


async def test_a_standby_enqueues_and_the_leaders_listener_wakes(pool: Pool, pg_dsn: str) -> None:
    lease = await take(pool)
    wakeup = Wakeup(pg_dsn, M)
    async with anyio.create_task_group() as tg:
        await tg.start(wakeup.run)
        assert wakeup.connected
        assert await wakeup.wait(poll=0.05) is False  # nothing yet: poll and wait again
        await enqueue(pool, "X", merchant="other")  # another merchant's queue
        assert await wakeup.wait(poll=0.2) is False
        got: list[bool] = []

        async def leader() -> None:
            got.append(await wakeup.wait(poll=10))

        tg.start_soon(leader)
        await enqueue(pool, "A", "B")  # from a standby's webhook
        with anyio.fail_after(5):
            while not got:
                await anyio.sleep(0.01)
        assert got == [True]
        assert [c.sku for c in await claim(pool, lease)] == ["A", "B"]
        await enqueue(pool, "C")  # a notification before the leader waits is not lost
        await until(lambda: _pending(wakeup))
        assert await wakeup.wait(poll=0) is True
        tg.cancel_scope.cancel()


async def _pending(wakeup: Wakeup) -> bool | None:
    return True if wakeup._pending else None


async def test_the_listener_reconnects_and_asks_for_a_poll(pool: Pool, pg_dsn: str) -> None:
    wakeup = Wakeup(pg_dsn, M, retry=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(wakeup.run)
        async with pool.connection() as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%%' AND datname = current_database()"
            )
        assert await wakeup.wait(poll=5) is True  # woken after the reconnect, to poll
        assert wakeup.connected
        tg.cancel_scope.cancel()
