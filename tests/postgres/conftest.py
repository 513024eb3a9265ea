"""PostgreSQL tests: one server per session (tests/pg.py), a database and a pool per test, and
a role that logs in with a password."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

from bench.pgserver import THROWAWAY, running_server
from daemon.store.pg.connect import Pool, open_pool
from daemon.store.pg.merchants import DEFAULT_MERCHANT, prepare
from daemon.store.pg.migrate import migrate
from tests.pg import PostgresServer, find_bindir, pg_dsn, postgres_server

__all__ = ["own_server", "password_role", "pg_dsn", "pool", "postgres_server"]


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A cluster of the test's own, to stop and start (`stop`, `start`): an outage must not take
    the session's server away from the other tests. Commits are synchronous (written to the
    kernel before they are acknowledged), so a crash (`stop("immediate")`) loses none of them:
    without it, a test of "nothing acknowledged is lost" would find the server's losses."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries")
    with running_server(bindir, {**THROWAWAY, "synchronous_commit": "on"}) as server:
        yield server


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[Pool]:
    """A pool on a fresh database, migrated and with merchant `default`'s schema prepared, as
    the daemon opens it (`migrate` alone leaves that schema at the steps database step 7 made)."""
    pool = await open_pool(pg_dsn, max_size=6)
    async with pool.connection() as conn:
        await migrate(conn)
        await prepare(conn, DEFAULT_MERCHANT)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def password_role(postgres_server: PostgresServer) -> Iterator[tuple[str, str]]:
    """A role that must give its password (SCRAM), on the session's otherwise trusting cluster.

    One line for this role alone goes first in pg_hba.conf; every other role still trusts."""
    name, password = "pw_" + secrets.token_hex(4), "pw-" + secrets.token_hex(12)
    hba = postgres_server.socket_dir / "data" / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"local all {name} scram-sha-256\n{original}")
    with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        admin.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server reloads its configuration on its own time
        try:
            psycopg.connect(
                postgres_server.dsn("postgres").replace("user=postgres", f"user={name}")
            ).close()
        except psycopg.OperationalError:
            break
        time.sleep(0.02)
    try:
        yield name, password
    finally:
        hba.write_text(original)
        with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
            admin.execute("SELECT pg_reload_conf()")
