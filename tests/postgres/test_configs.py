"""Replicas with different configs, against a real PostgreSQL: the newer config leads, an older
one never takes the lease back while a newer one is live, a rollback converges, and replicas
with one config behave as before (one leads, nobody yields)."""

from __future__ import annotations

import anyio
import pytest

from daemon.replicas import configs
from daemon.replicas.leader import LeaseKeeper
from daemon.store.pg.connect import Pool
from tests.pg import until

pytestmark = pytest.mark.anyio

M = "acme"
OLD, NEW = "a" * 64, "b" * 64


def keeper(pool: Pool, holder: str, fingerprint: str | None, ttl: float = 10.0) -> LeaseKeeper:
    return LeaseKeeper(pool, M, holder, ttl, fingerprint=fingerprint)


async def test_one_config_elects_as_before_and_nobody_differs(pool: Pool) -> None:
    a, b = keeper(pool, "a", OLD), keeper(pool, "b", OLD)
    first = await a.step()
    assert first is not None and await b.step() is None
    for _ in range(3):
        lease = await a.step()
        assert lease is not None and lease.epoch == first.epoch  # nobody yields
        assert await b.step() is None
    for k in (a, b):
        assert k.config is not None and k.config.generation == 1
        assert not k.config.differs and not k.outranked()


async def test_a_newer_config_takes_over_and_the_older_never_takes_it_back(pool: Pool) -> None:
    old = keeper(pool, "old", OLD)
    assert await old.step() is not None  # it leads first
    new = keeper(pool, "new", NEW)  # a rolling update: the first replica of the new config
    assert await new.step() is None  # the lease is held
    assert new.config is not None and new.config.generation == 2
    assert new.config.differs  # says so while the old config leads
    assert await old.step() is None  # it sees a newer live config: it hands the lease over
    assert not old.leading()
    taken = await new.step()
    assert taken is not None
    for _ in range(3):  # the old one stands by, however often it steps, while the new lives
        assert await old.step() is None
        assert await new.step() is not None
    assert old.config is not None and old.config.differs and old.outranked()
    assert new.config is not None and not new.config.differs
    assert old.leader is not None and old.leader.holder == "new"
    async with pool.connection() as conn:  # the leader's config in the database (README's query)
        cursor = await conn.execute(
            "SELECT l.holder, r.fingerprint, g.generation"
            " FROM leases l JOIN replica_configs r USING (merchant, holder)"
            " JOIN config_generations g USING (merchant, fingerprint) WHERE l.merchant = %s",
            (M,),
        )
        assert await cursor.fetchall() == [("new", NEW, 2)]


async def test_a_rollback_leads_once_the_last_newer_replica_stops(pool: Pool) -> None:
    old = keeper(pool, "old", OLD)
    await old.step()
    new = keeper(pool, "new", NEW)
    await new.step()
    await old.step()
    assert await new.step() is not None
    await old.release()  # the rollback: the old config deployed again, in a new process
    back = keeper(pool, "back", OLD)
    assert await back.step() is None  # it keeps its first, lower generation: no flapping
    assert back.config is not None and back.config.generation == 1 and back.outranked()
    await new.release()  # the last replica of the newer config stops
    lease = await back.step()
    assert lease is not None  # the old config leads again at once
    assert back.config is not None and not back.config.differs


async def test_a_newer_replica_that_died_stops_counting_after_the_ttl(pool: Pool) -> None:
    ttl = 1.0
    old = keeper(pool, "old", OLD, ttl)
    await old.step()
    new = keeper(pool, "new", NEW, ttl)
    await new.step()
    await old.step()
    assert await new.step() is not None  # it leads, then dies without a word (SIGKILL)
    assert await old.step() is None and old.outranked()

    async def old_leads() -> bool | None:
        return True if await old.step() is not None else None

    await until(old_leads, timeout=5 * ttl)
    assert old.config is not None and not old.outranked()


async def test_configs_published_at_once_get_distinct_generations(pool: Pool) -> None:
    views: list[configs.ConfigView] = []

    async def publish(n: int) -> None:
        async with pool.connection() as conn:
            views.append(await configs.beat(conn, M, f"r{n}", f"{n:064d}", 10.0))

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(publish, n)
    assert sorted(v.generation for v in views) == [1, 2, 3, 4, 5]
    async with pool.connection() as conn:  # a restart with the same config keeps its place
        again = await configs.beat(conn, M, "r9", views[0].fingerprint, 10.0)
    assert again.generation == views[0].generation and again.newest == 5
