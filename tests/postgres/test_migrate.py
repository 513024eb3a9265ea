"""Migrations: applied once, in order, even when several replicas start together."""

from __future__ import annotations

import anyio
import pytest

from daemon.store.pg.connect import connect
from daemon.store.pg.migrate import MIGRATIONS, Migration, SchemaTooNew, migrate

pytestmark = pytest.mark.anyio


async def versions(dsn: str) -> list[int]:
    async with await connect(dsn) as conn:
        cursor = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [row[0] for row in await cursor.fetchall()]


async def test_a_fresh_database_gets_every_step_once(pg_dsn: str) -> None:
    async with await connect(pg_dsn) as conn:
        assert await migrate(conn) == [m.version for m in MIGRATIONS]
        assert await migrate(conn) == []
    assert await versions(pg_dsn) == [m.version for m in MIGRATIONS]


async def test_replicas_starting_together_migrate_once(pg_dsn: str) -> None:
    applied: list[list[int]] = []

    async def start() -> None:
        async with await connect(pg_dsn) as conn:
            applied.append(await migrate(conn))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(start)
    assert sorted(applied, key=len) == [[], [], [], [m.version for m in MIGRATIONS]]
    assert await versions(pg_dsn) == [m.version for m in MIGRATIONS]


async def test_a_later_step_applies_on_top_and_a_failed_step_changes_nothing(pg_dsn: str) -> None:
    async with await connect(pg_dsn) as conn:
        await migrate(conn)
        broken = (*MIGRATIONS, Migration(99, "broken", ("CREATE TABLE t99 (a int)", "NOT SQL")))
        with pytest.raises(Exception, match="syntax"):
            await migrate(conn, broken)
        cursor = await conn.execute("SELECT to_regclass('t99')")
        assert (await cursor.fetchone()) == (None,)
        later = (*MIGRATIONS, Migration(99, "later", ("CREATE TABLE t99 (a int)",)))
        assert await migrate(conn, later) == [99]


async def test_a_database_from_a_newer_stocksync_is_refused(pg_dsn: str) -> None:
    async with await connect(pg_dsn) as conn:
        await migrate(conn, (*MIGRATIONS, Migration(99, "future", ("SELECT 1",))))
        with pytest.raises(SchemaTooNew, match="newer stocksync"):
            await migrate(conn)
