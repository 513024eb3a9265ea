"""A throwaway PostgreSQL server for the tests: one cluster per test session, a database per test.

The cluster lives in a temporary folder and listens only on a Unix socket there, with `fsync`
off (it is thrown away). initdb refuses to run as root, so as root the server runs as the
`postgres` user that Debian's package creates. Tests that need PostgreSQL are skipped, with the
reason, only when no server binary can be found; under CI (`CI` set) that is a failure instead,
because `.ci/run` installs the `postgresql` package.

Use it from a conftest.py: `from tests.pg import pg_dsn, postgres_server` (fixtures are found
by name in the conftest's namespace).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import psycopg
import pytest
from psycopg import sql

__all__ = ["PostgresServer", "find_bindir", "pg_dsn", "postgres_server", "until"]

#: Where Debian puts each major version's server binaries (they are not on PATH).
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
SERVER_SETTINGS = {
    "listen_addresses": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: $STOCKSYNC_PG_BINDIR, PATH, or Debian's newest."""
    configured = os.environ.get("STOCKSYNC_PG_BINDIR")
    if configured:
        return Path(configured)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/").glob(DEBIAN_BINDIRS.lstrip("/")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if (bindir / "initdb").exists():
            return bindir
    return None


@dataclass(frozen=True, slots=True)
class PostgresServer:
    """A running cluster: connect through `socket_dir` as `user`."""

    socket_dir: Path
    port: int
    user: str

    def dsn(self, dbname: str) -> str:
        return f"host={self.socket_dir} port={self.port} user={self.user} dbname={dbname}"


def _as_server_user(command: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *command] if owner else command


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stdout}{result.stderr}")


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
        reason = "no PostgreSQL server binaries (initdb) found: apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(reason + " (.ci/run installs it)")
        pytest.skip(reason)
    owner = None
    if os.geteuid() == 0:
        owner = "postgres"  # initdb refuses root; Debian's package creates this user
        try:
            pwd.getpwnam(owner)
        except KeyError:
            pytest.fail("running as root needs the 'postgres' user to own the test cluster")
    folder = Path(tempfile.mkdtemp(prefix="stocksync-pg-"))
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data = folder / "data"
    port = 5432  # the socket lives in our own folder, so no other server's port can clash
    options = " ".join(f"-c {name}={value!r}" for name, value in SERVER_SETTINGS.items())
    options += f" -c unix_socket_directories='{folder}' -p {port}"
    try:
        _run(
            _as_server_user(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                owner,
            ),
            "initdb",
        )  # fmt: skip
        _run(
            _as_server_user(
                [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"),
                 "-o", options, "-w", "-t", "30", "start"],
                owner,
            ),
            "pg_ctl start",
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        yield PostgresServer(socket_dir=folder, port=port, user="postgres")
    finally:
        subprocess.run(
            _as_server_user(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], owner
            ),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test; its libpq connection string."""
    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield postgres_server.dsn(name)
    finally:
        with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
