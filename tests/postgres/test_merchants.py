"""Merchants in one PostgreSQL database: today's state becomes merchant `default`'s without
loss, one merchant's locks never hold another up, and one merchant can be dropped alone."""

from __future__ import annotations

from decimal import Decimal
from functools import partial

import anyio
import pytest

from daemon.core.errors import StateUnusable
from daemon.core.models import Outcome, StockLevel, Value, Verdict
from daemon.rules.plan import Contribution
from daemon.store import Store, Timing
from daemon.store.codec import encode_stock
from daemon.store.pg import lookups
from daemon.store.pg.backend import PostgresStore
from daemon.store.pg.base import ALL_ITEMS
from daemon.store.pg.connect import Pool, connect, open_pool
from daemon.store.pg.merchants import MERCHANT_MIGRATIONS, drop, lock_key, prepare, schema_name
from daemon.store.pg.migrate import MIGRATIONS, migrate
from daemon.store.pg.stores import PostgresStores
from tests.pg import until

pytestmark = pytest.mark.anyio

T = Timing(debounce=0.0, max_delay=1.0)


async def write(
    store: Store, sku: str, quantity: int, *, at: float, old: Pool | None = None
) -> None:
    """A record, its share, an acknowledged push (history) and a meta value. `old`: the
    record written on that pool as a release of the step-4 schema wrote it (before `rev`)."""
    level = StockLevel(sku, 1, Decimal(quantity), Decimal(0), None)
    if old is None:
        await store.save_stock([level], 1)
    else:
        async with old.connection() as conn:
            await conn.execute(
                "INSERT INTO records (sku, stock, seen_scan, updated_at) VALUES (%s, %s, 1, %s)",
                (sku, encode_stock(level), at),
            )
    await store.replace_shares("c", [sku], [(sku, Contribution(sku, Decimal(quantity), None))])
    await store.set_desired("c", {sku: Value(quantity=quantity)}, at, T)
    sent = await store.claim("c", at + 1, 10)
    verdicts = [Verdict(i.key, i.value, Outcome.ACKNOWLEDGED) for i in sent]
    await store.settle("c", verdicts, at + 1, T, lambda _attempt: 1.0)
    await store.set_meta("last", sku)


async def state(store: Store) -> tuple[object, ...]:
    return (
        await store.records(),
        await store.items(),
        await store.counts(),
        await store.positive_acked(),
        await store.history("A"),
        await store.get_meta("last"),
    )


async def test_an_old_database_keeps_its_state_as_merchant_default(pg_dsn: str) -> None:
    pool = await open_pool(pg_dsn, max_size=2)
    try:
        async with pool.connection() as conn:
            assert await migrate(conn, MIGRATIONS[:6]) == [1, 2, 3, 4, 5, 6]
        old = PostgresStore(pool)  # the tables where steps 4 and 5 made them
        await write(old, "A", 3, at=10.0, old=pool)
        before = await state(old)
        async with pool.connection() as conn:
            assert await migrate(conn) == [7, 8]
            cursor = await conn.execute(
                "SELECT to_regclass('public.items'), to_regclass('stocksync_default.items')"
            )
            assert await cursor.fetchone() == (None, "stocksync_default.items")
            cursor = await conn.execute(
                "SELECT version FROM stocksync_default.merchant_migrations ORDER BY 1"
            )
            assert [v for (v,) in await cursor.fetchall()] == [1, 2]
    finally:
        await pool.close()

    stores = await PostgresStores.open(pg_dsn, max_size=2)
    try:
        default = await stores.store_for("default")
        assert await state(default) == before
        await write(default, "B", 2, at=20.0)  # its triggers, functions and ids work on
        assert (await default.counts())["c"]["ok"] == 2
        async with stores.pool.connection() as conn:  # a manual fix, on the session's path
            await conn.execute("UPDATE stocksync_default.items SET status = 'pending'")
        assert (await default.counts())["c"] == {"pending": 2}
        acme = await stores.store_for("acme")  # a new merchant: made at the same version
        assert await state(acme) == ([], [], {}, {}, [], None)
        async with stores.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT version FROM stocksync_acme.merchant_migrations ORDER BY 1"
            )
            assert [v for (v,) in await cursor.fetchall()] == [
                m.version for m in MERCHANT_MIGRATIONS
            ]
    finally:
        await stores.close()


async def _waiting_locks(pool: Pool) -> int | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        row = await cursor.fetchone()
    return int(row[0]) if row is not None and row[0] else None


async def test_one_merchants_locks_never_hold_another_up(pg_dsn: str) -> None:
    stores = await PostgresStores.open(pg_dsn, max_size=4)
    acme, bolt = await stores.store_for("acme"), await stores.store_for("bolt")
    try:
        async with stores.pool.connection() as other:
            # acme's store-wide lock, as a `recover` of acme holds it, until `commit`.
            await other.execute(
                "SELECT pg_advisory_xact_lock(%s::int8)", (lock_key("acme", ALL_ITEMS),)
            )
            with anyio.fail_after(10):
                await write(bolt, "A", 1, at=1.0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(write, acme, "A", 1, at=1.0))
                assert await until(lambda: _waiting_locks(stores.pool)) == 1  # acme waits
                await other.commit()
        assert await state(acme) == await state(bolt)
    finally:
        await stores.close()


async def test_one_merchant_is_dropped_alone(pg_dsn: str) -> None:
    stores = await PostgresStores.open(pg_dsn, max_size=2)
    try:
        acme, bolt = await stores.store_for("acme"), await stores.store_for("bolt")
        await write(acme, "A", 1, at=1.0)
        await write(bolt, "A", 2, at=1.0)
        kept = await state(bolt)
        async with stores.pool.connection() as conn:
            await lookups.enqueue(conn, "acme", ["A"])
            await lookups.enqueue(conn, "bolt", ["A"])
            await conn.execute(
                "INSERT INTO leases VALUES ('acme', 'r1', 1, clock_timestamp() + interval '1 h',"
                " clock_timestamp())"
            )
            await conn.commit()
            with pytest.raises(StateUnusable, match="led by r1"):
                await drop(conn, "acme")
            await conn.execute("UPDATE leases SET expires_at = clock_timestamp()")
            await conn.commit()
            assert await drop(conn, "acme") is True
            assert await drop(conn, "acme") is False
            cursor = await conn.execute(
                "SELECT to_regnamespace(%s), (SELECT count(*) FROM leases),"
                " (SELECT array_agg(merchant) FROM lookup_queue)",
                (schema_name("acme"),),
            )
            assert await cursor.fetchone() == (None, 0, ["bolt"])
        assert await state(bolt) == kept
    finally:
        await stores.close()


async def test_replicas_opening_a_new_merchant_together_make_it_once(pg_dsn: str) -> None:
    async with await connect(pg_dsn) as conn:
        await migrate(conn)
    applied: list[list[int]] = []

    async def open_it() -> None:
        async with await connect(pg_dsn) as conn:
            applied.append(await prepare(conn, "new-shop"))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(open_it)
    assert sorted(applied, key=len) == [[], [], [], [m.version for m in MERCHANT_MIGRATIONS]]
    store = await PostgresStore.open(pg_dsn, merchant="new-shop")  # a quoted name: "-"
    try:
        await write(store, "A", 1, at=1.0)
        assert (await store.counts())["c"] == {"ok": 1}
    finally:
        await store.close()
