"""The store contract suite runs over every backend: each one is a `store` fixture parameter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from daemon.store import SQLiteStore, Store

#: backend name -> opens a fresh store (and, called again, the same one after a restart)
Opener = Callable[[], Awaitable[Store]]


def _sqlite(tmp_path: Path) -> Opener:
    async def open_it() -> Store:
        return SQLiteStore(tmp_path / "state.db")

    return open_it


BACKENDS: dict[str, Callable[[Path], Opener]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(BACKENDS))
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the backend under test on this test's own state; call again to 'restart'."""
    factory: Callable[[Path], Opener] = BACKENDS[request.param]
    return factory(tmp_path)


@pytest.fixture
async def store(reopen: Opener) -> AsyncIterator[Store]:
    opened = await reopen()
    yield opened
    await opened.close()
