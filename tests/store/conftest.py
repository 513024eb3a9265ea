"""The store contract suite runs over every backend: each one is a `store` fixture parameter.

PostgreSQL runs on the session's throwaway server (tests/pg.py), a fresh database per test;
"restarting" opens a new store (and pool) on the same database. `postgres-acme` runs the suite
over a merchant other than `default`, in a database where `default` already holds a state on
the same channel and keys: any query that is not scoped to its merchant sees it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.core.models import Outcome, StockLevel, Value, Verdict
from daemon.store import SQLiteStore, Store, Timing
from daemon.store.pg.backend import PostgresStore
from tests.pg import pg_dsn, postgres_server

__all__ = ["pg_dsn", "postgres_server"]

#: backend name -> opens a fresh store (and, called again, the same one after a restart)
Opener = Callable[[], Awaitable[Store]]


def _sqlite(tmp_path: Path) -> Opener:
    async def open_it() -> Store:
        return SQLiteStore(tmp_path / "state.db")

    return open_it


async def seed(store: Store) -> None:
    """A state another merchant must never see: records, items, their counts, history, meta."""
    timing = Timing(debounce=0.0, max_delay=1.0)
    await store.save_stock([StockLevel(s, 1, Decimal(4), Decimal(0), None) for s in "AKZ"], 1)
    await store.set_desired("c", {"k": Value(quantity=4), "seeded": Value(quantity=5)}, 1.0, timing)
    sent = await store.claim("c", 2.0, 10)
    verdicts = [Verdict(i.key, i.value, Outcome.ACKNOWLEDGED) for i in sent]
    await store.settle("c", verdicts, 2.0, timing, lambda _attempt: 1.0)
    await store.set_meta("seeded", "default")


def _postgres(request: pytest.FixtureRequest, merchant: str = "default") -> Opener:
    dsn: str = request.getfixturevalue("pg_dsn")
    seeded = merchant == "default"

    async def open_it() -> Store:
        nonlocal seeded
        if not seeded:
            neighbour = await PostgresStore.open(dsn, max_size=2)
            await seed(neighbour)
            await neighbour.close()
            seeded = True
        return await PostgresStore.open(dsn, merchant=merchant, max_size=4)

    return open_it


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Opener]] = {
    "sqlite": lambda _request, tmp_path: _sqlite(tmp_path),
    "postgres": lambda request, _tmp_path: _postgres(request),
    "postgres-acme": lambda request, _tmp_path: _postgres(request, "acme"),
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
