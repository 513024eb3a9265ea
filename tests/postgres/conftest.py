"""PostgreSQL tests: one server per session (tests/pg.py), a database and a pool per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from daemon.pg.connect import Pool, open_pool
from daemon.pg.migrate import migrate
from tests.pg import pg_dsn, postgres_server

__all__ = ["pg_dsn", "pool", "postgres_server"]


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[Pool]:
    """A pool on a fresh, migrated database."""
    pool = await open_pool(pg_dsn, max_size=6)
    async with pool.connection() as conn:
        await migrate(conn)
    try:
        yield pool
    finally:
        await pool.close()
