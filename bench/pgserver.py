"""A throwaway PostgreSQL server in a temporary folder: for the tests' fixtures (tests/pg.py) and
for the bench's high-availability and store figures, which run `stocksync run` replicas on it.

The cluster listens only on a Unix socket in its own folder (so no other server's port can
clash). initdb refuses to run as root, so as root the server runs as the `postgres` user that
Debian's package creates. Debian keeps the server binaries off PATH: `find_bindir` looks there too.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

__all__ = [
    "DURABLE",
    "NO_BINARIES",
    "THROWAWAY",
    "PostgresServer",
    "find_bindir",
    "running_server",
    "state_url",
]

#: Where Debian puts each major version's server binaries (they are not on PATH).
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
NO_BINARIES = (
    "no PostgreSQL server binaries (initdb) found: apt-get install postgresql, "
    "or set STOCKSYNC_PG_BINDIR"
)
#: Tests: nothing survives a crash of the machine, so nothing is flushed.
THROWAWAY = {
    "listen_addresses": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
#: Benchmarks: PostgreSQL's own defaults for durability, as a deployment runs it.
DURABLE = {"listen_addresses": "", "max_connections": "200"}


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: $STOCKSYNC_PG_BINDIR (if set, the only place
    looked), PATH, or Debian's newest. None: no server binaries here."""
    configured = os.environ.get("STOCKSYNC_PG_BINDIR")
    if configured:
        return Path(configured) if (Path(configured) / "initdb").exists() else None
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
    #: how `stop` and `start` run pg_ctl again (None: a server this module did not start)
    bindir: Path | None = None
    options: str = ""
    owner: str | None = None

    def dsn(self, dbname: str) -> str:
        """libpq's `key=value` form, as psycopg takes it."""
        return f"host={self.socket_dir} port={self.port} user={self.user} dbname={dbname}"

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database, dropped afterwards (connections and all); yields its name."""
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            with psycopg.connect(self.dsn("postgres"), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: sessions are ended; `immediate`: a crash), as an outage."""
        _run(self._pg_ctl("-m", mode, "-w", "stop"), "pg_ctl stop")

    def start(self) -> None:
        """Start it again after `stop`, with the settings it was started with."""
        log = str(self.socket_dir / "server.log")
        _run(self._pg_ctl("-l", log, "-o", self.options, "-w", "-t", "30", "start"), "pg_ctl start")

    def _pg_ctl(self, *args: str) -> list[str]:
        if self.bindir is None:
            raise RuntimeError("this server was not started here: cannot stop or start it")
        data = str(self.socket_dir / "data")
        return _as_server_user([str(self.bindir / "pg_ctl"), "-D", data, *args], self.owner)


def state_url(dsn: str) -> str:
    """libpq's `key=value` form as the `postgresql://` URL `daemon.state` takes."""
    parts = dict(item.split("=", 1) for item in dsn.split())
    host = quote(parts["host"], safe="")
    return f"postgresql://{parts['user']}@/{parts['dbname']}?host={host}&port={parts['port']}"


def _as_server_user(command: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *command] if owner else command


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stdout}{result.stderr}")


def _owner() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")  # initdb refuses root; Debian's package creates this user
    except KeyError:
        raise RuntimeError(
            "running as root needs the 'postgres' user to own the throwaway cluster"
        ) from None
    return "postgres"


@contextmanager
def running_server(
    bindir: Path, settings: Mapping[str, str] = THROWAWAY
) -> Iterator[PostgresServer]:
    """initdb and start a cluster in a temporary folder; stop it and delete the folder after."""
    owner = _owner()
    folder = Path(tempfile.mkdtemp(prefix="stocksync-pg-"))
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data = folder / "data"
    port = 5432  # the socket lives in our own folder, so no other server's port can clash
    options = " ".join(f"-c {name}={value!r}" for name, value in settings.items())
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
        yield PostgresServer(
            socket_dir=folder, port=port, user="postgres", bindir=bindir, options=options,
            owner=owner,
        )  # fmt: skip
    finally:
        subprocess.run(
            _as_server_user(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], owner
            ),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)
