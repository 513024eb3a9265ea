"""The leader lease against a real PostgreSQL: one holder, epochs, expiry, fencing, renewal."""

from __future__ import annotations

import time

import anyio
import pytest

from daemon.replicas.leader import LeaseKeeper
from daemon.store.pg import lease as leases
from daemon.store.pg.connect import Pool
from daemon.store.pg.lease import FENCE, Lease, LeaseLost, fence, fence_params
from tests.pg import until

pytestmark = pytest.mark.anyio

M = "acme"


async def acquire(pool: Pool, holder: str, ttl: float = 10.0, merchant: str = M) -> Lease | None:
    async with pool.connection() as conn:
        return await leases.acquire(conn, merchant, holder, ttl)


async def renew(pool: Pool, lease: Lease) -> Lease | None:
    async with pool.connection() as conn:
        return await leases.renew(conn, lease)


async def fenced_insert(pool: Pool, lease: Lease, value: int) -> int:
    """A leader's single-statement write with FENCE in its WHERE: the rows it wrote."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO writes (value) SELECT %(value)s WHERE " + FENCE,
            {"value": value, **fence_params(lease)},
        )
        return cursor.rowcount


@pytest.fixture
async def writes(pool: Pool) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE writes (value int)")


async def written(pool: Pool) -> list[int]:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT value FROM writes ORDER BY value")
        return [row[0] for row in await cursor.fetchall()]


def test_a_lease_is_valid_on_the_holders_clock_until_ttl_minus_margin() -> None:
    lease = Lease(merchant=M, holder="a", epoch=1, ttl=15.0, margin=3.0, started=100.0)
    assert lease.valid(100.0) and lease.valid(111.9)
    assert not lease.valid(112.0)  # the database still has 3 s to go: we stop first
    assert leases.default_margin(15.0) == 3.0


async def test_of_two_contenders_exactly_one_holds(pool: Pool) -> None:
    for round_ in range(5):
        merchant = f"m{round_}"
        results: dict[str, Lease | None] = {}

        async def bid(
            holder: str, merchant: str = merchant, results: dict[str, Lease | None] = results
        ) -> None:
            results[holder] = await acquire(pool, holder, merchant=merchant)

        async with anyio.create_task_group() as tg:
            for holder in ("a", "b", "c"):
                tg.start_soon(bid, holder)
        winners = [lease for lease in results.values() if lease is not None]
        assert len(winners) == 1
        assert winners[0].epoch == 1
        async with pool.connection() as conn:
            info = await leases.read(conn, merchant)
        assert info is not None and info.holder == winners[0].holder and info.epoch == 1


async def test_the_holder_cannot_acquire_twice_but_renews_under_the_same_epoch(pool: Pool) -> None:
    a = await acquire(pool, "a")
    assert a is not None
    assert await acquire(pool, "a") is None
    renewed = await renew(pool, a)
    assert renewed is not None and renewed.epoch == a.epoch and renewed.started >= a.started


async def test_expiry_lets_another_take_over_with_a_higher_epoch(pool: Pool) -> None:
    a = await acquire(pool, "a", ttl=0.3)
    assert a is not None
    assert await acquire(pool, "b", ttl=0.3) is None
    b = await until(lambda: acquire(pool, "b", ttl=10.0))
    assert b.epoch == a.epoch + 1
    assert await renew(pool, a) is None  # the old holder learns it lost
    assert await acquire(pool, "a") is None


async def test_renewal_keeps_the_lease_past_its_ttl(pool: Pool) -> None:
    a = await acquire(pool, "a", ttl=1.0)
    assert a is not None
    end = time.monotonic() + 2.0  # twice the TTL
    while time.monotonic() < end:
        await anyio.sleep(0.2)  # renewing often: a busy machine must not make this flaky
        renewed = await renew(pool, a)
        assert renewed is not None and renewed.epoch == a.epoch
        a = renewed
        assert await acquire(pool, "b", ttl=1.0) is None


async def test_a_stale_epochs_writes_are_refused(pool: Pool, writes: None) -> None:
    a = await acquire(pool, "a", ttl=0.3)
    assert a is not None
    assert await fenced_insert(pool, a, 1) == 1
    b = await until(lambda: acquire(pool, "b"))
    assert await fenced_insert(pool, a, 2) == 0
    async with pool.connection() as conn:
        with pytest.raises(LeaseLost, match="moved on from epoch 1"):
            await fence(conn, a)
    assert await fenced_insert(pool, b, 4) == 1
    assert await written(pool) == [1, 4]


async def test_a_takeover_waits_for_the_old_leaders_transaction_in_flight(
    pool: Pool, writes: None
) -> None:
    a = await acquire(pool, "a", ttl=0.5)
    assert a is not None
    taken: list[Lease] = []
    async with pool.connection() as conn:
        await fence(conn, a)  # the transaction stays open: the fence's lock with it
        await anyio.sleep(0.6)  # the lease expires meanwhile

        async def take_over() -> None:
            taken.append(await until(lambda: acquire(pool, "b")))

        async with anyio.create_task_group() as tg:
            tg.start_soon(take_over)

            async def blocked() -> bool | None:
                async with pool.connection() as probe:
                    cursor = await probe.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                    row = await cursor.fetchone()
                    return True if row is not None and row[0] > 0 else None

            await until(blocked)
            assert taken == []
            await conn.execute("INSERT INTO writes VALUES (1)")
            await conn.commit()
    assert taken[0].epoch == a.epoch + 1
    assert await written(pool) == [1]  # committed before the new epoch began
    assert await fenced_insert(pool, a, 2) == 0


async def test_release_hands_over_at_once(pool: Pool) -> None:
    a = await acquire(pool, "a", ttl=60.0)
    assert a is not None
    async with pool.connection() as conn:
        await leases.release(conn, a)
    b = await acquire(pool, "b")
    assert b is not None and b.epoch == 2


async def test_keepers_elect_one_leader_and_fail_over_when_it_dies(pool: Pool) -> None:
    ttl = 0.6
    keepers = [LeaseKeeper(pool, M, name, ttl) for name in ("a", "b", "c")]
    async with anyio.create_task_group() as tg:
        scopes = []
        for keeper in keepers:
            scope = anyio.CancelScope()
            scopes.append(scope)

            async def keep(keeper: LeaseKeeper = keeper, scope: anyio.CancelScope = scope) -> None:
                with scope:
                    await keeper.run()

            tg.start_soon(keep)

        async def one_leads() -> LeaseKeeper | None:
            leading = [k for k in keepers if k.leading()]
            assert len(leading) <= 1
            return leading[0] if leading else None

        async def another_leads() -> LeaseKeeper | None:
            return None if first.leading() else await one_leads()

        first = await until(one_leads)
        first_lease = first.lease()
        assert first_lease is not None
        died_at = time.monotonic()
        scopes[keepers.index(first)].cancel()  # dies without releasing: the lease must expire
        second = await until(another_leads, timeout=5)
        assert second is not first
        assert time.monotonic() - died_at < ttl + 3.0  # about the TTL (loose: a busy CI)
        second_lease = second.lease()
        assert second_lease is not None and second_lease.epoch == first_lease.epoch + 1
        standby = next(k for k in keepers if k not in (first, second))

        async def standby_knows() -> bool | None:
            info = standby.leader
            return True if info is not None and info.holder == second.holder else None

        await until(standby_knows, timeout=5)
        tg.cancel_scope.cancel()


async def test_a_paused_leader_knows_on_its_own_clock_before_the_database_says(
    pool: Pool,
) -> None:
    now = [1000.0]
    keeper = LeaseKeeper(pool, M, "a", ttl=10.0, clock=lambda: now[0])
    lease = await keeper.step()
    assert lease is not None and keeper.leading()
    now[0] += 8.1  # paused past ttl - margin; the database still has the lease for ~2 s
    assert keeper.lease() is None and not keeper.leading()
    async with pool.connection() as conn:
        info = await leases.read(conn, M)
    assert info is not None and info.holder == "a" and info.expires_in > 0


async def test_the_leaders_work_ends_before_another_replicas_work_begins(pool: Pool) -> None:
    """A leader whose renewals stop (a stuck loop, a partition) ends its own work on its own
    clock before the database lets another replica lead."""
    ttl = 0.6
    events: list[tuple[str, str, int, float]] = []

    async def work(holder: str, lease: Lease) -> None:
        events.append(("start", holder, lease.epoch, time.monotonic()))
        try:
            await anyio.sleep_forever()
        finally:
            events.append(("end", holder, lease.epoch, time.monotonic()))

    keepers = {name: LeaseKeeper(pool, M, name, ttl) for name in ("a", "b")}
    renewals = {name: anyio.CancelScope() for name in keepers}
    async with anyio.create_task_group() as tg:
        for name, keeper in keepers.items():

            async def renew(keeper: LeaseKeeper = keeper, name: str = name) -> None:
                with renewals[name]:
                    await keeper.run()

            async def leading(keeper: LeaseKeeper = keeper, name: str = name) -> None:
                await keeper.lead(lambda lease, name=name: work(name, lease))

            tg.start_soon(renew)
            tg.start_soon(leading)

        async def started(count: int) -> bool | None:
            return True if sum(e[0] == "start" for e in events) >= count else None

        await until(lambda: started(1), timeout=5)
        first = events[0][1]
        renewals[first].cancel()  # its lease is no longer renewed
        await until(lambda: started(2), timeout=5)
        tg.cancel_scope.cancel()
    (start_1, end_1, start_2) = (
        next(e for e in events if e[0] == "start" and e[1] == first),
        next(e for e in events if e[0] == "end" and e[1] == first),
        next(e for e in events if e[0] == "start" and e[1] != first),
    )
    assert end_1[3] < start_2[3]  # never two leaders' work at once
    assert start_2[2] == start_1[2] + 1


async def test_a_fenced_write_refused_in_the_work_makes_a_standby_not_a_crash(pool: Pool) -> None:
    keeper = LeaseKeeper(pool, M, "a", ttl=30.0)
    assert await keeper.step() is not None
    calls: list[int] = []

    async def work(lease: Lease) -> None:
        calls.append(lease.epoch)
        raise LeaseLost("the database refused epoch 1")

    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.lead, work)

        async def standby() -> bool | None:
            return True if calls and not keeper.leading() else None

        await until(standby, timeout=5)
        assert calls == [1]  # not restarted under the same epoch, and lead() is still running
        tg.cancel_scope.cancel()
