"""The store contract suite runs over every backend: each one is a `store` fixture parameter.

PostgreSQL runs on the session's throwaway server (tests/pg.py), a fresh database per test;
"restarting" opens a new store (and pool) on the same database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from daemon.store import SQLiteStore, Store
from daemon.store.pg.backend import PostgresStore
from tests.pg import pg_dsn, postgres_server

__all__ = ["pg_dsn", "postgres_server"]

#: backend name -> opens a fresh store (and, called again, the same one after a restart)
Opener = Callable[[], Awaitable[Store]]


def _sqlite(tmp_path: Path) -> Opener:
    async def open_it() -> Store:
        return SQLiteStore(tmp_path / "state.db")

    return open_it


def _postgres(request: pytest.FixtureRequest) -> Opener:
    dsn: str = request.getfixturevalue("pg_dsn")

    async def open_it() -> Store:
        return await PostgresStore.open(dsn, max_size=4)

    return open_it


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Opener]] = {
    "sqlite": lambda _request, tmp_path: _sqlite(tmp_path),
    "postgres": lambda request, _tmp_path: _postgres(request),
}


@pytest.fixture(params=sorted(BACKENDS))
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the backend under test on this test's own state; call again to 'restart'."""
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture
async def store(reopen: Opener) -> AsyncIterator[Store]:
    opened = await reopen()
    yield opened
    await opened.close()
