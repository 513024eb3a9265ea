"""A throwaway PostgreSQL server for the tests: one cluster per test session, a database per test.

The cluster itself is bench/pgserver.py's (the bench runs replicas on one too), here with
`fsync` off: it is thrown away. Tests that need PostgreSQL are skipped, with the reason, only
when no server binary can be found; under CI (`CI` set) that is a failure instead, because
`.ci/run` installs the `postgresql` package.

Use it from a conftest.py: `from tests.pg import pg_dsn, postgres_server` (fixtures are found
by name in the conftest's namespace).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import anyio
import pytest

from bench.pgserver import NO_BINARIES, PostgresServer, find_bindir, running_server

__all__ = ["PostgresServer", "find_bindir", "pg_dsn", "postgres_server", "until"]

T = TypeVar("T")


async def until(get: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0) -> T:
    """Poll an async query until it returns something other than None (or `timeout` passes)."""
    with anyio.fail_after(timeout):
        while True:
            value = await get()
            if value is not None:
                return value
            await anyio.sleep(0.02)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL cluster for this test session; stop and delete it afterwards."""
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail(NO_BINARIES + " (.ci/run installs it)")
        pytest.skip(NO_BINARIES)
    with running_server(bindir) as server:
        yield server


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test; its libpq connection string."""
    with postgres_server.database() as name:
        yield postgres_server.dsn(name)
