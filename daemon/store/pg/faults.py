"""The one place a PostgreSQL error becomes `StoreUnavailable`: a state, never a crash.

A restart, a failover or a network cut reaches us as many psycopg errors (`AdminShutdown` in the
middle of a statement, `OperationalError` on a lost connection, `InterfaceError` on a closed one,
the pool's `PoolTimeout` while nothing can connect). Every caller in the daemon already knows
what to do with `StoreUnavailable` (back off, keep the work, retry; readiness says why), so every
connection taken from the pool goes through `Database.connection`, and an error on it is counted
in the one `StoreHealth` of this process: one log line per episode, readiness 503 until a write
works again.

Every `psycopg.Error` is translated, not only the connection errors: a statement refused for a
reason that may pass (a lock or statement timeout, a serialization failure, a server in
recovery) must not end the process either, and a bug that fails every call shows as a readiness
503 that names it rather than a restart loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from psycopg import AsyncConnection
from psycopg import Error as PsycopgError
from psycopg.rows import TupleRow

from daemon.core.errors import StoreUnavailable
from daemon.store.pg.connect import Pool

if TYPE_CHECKING:  # the store's package imports this module: no cycle at run time
    from daemon.store import StoreHealth

__all__ = ["HINT", "Database", "describe_error", "translated"]

#: The `store.unavailable` line's hint on PostgreSQL.
HINT = (
    "cannot reach PostgreSQL (restart, failover, network?): webhooks are answered 503, the "
    "leader pushes nothing until it holds its lease again; nothing is lost, it recovers by itself"
)


def describe_error(exc: BaseException) -> str:
    """The class and first line of libpq's message: it names the server, never the password
    (the password is not in the DSN)."""
    first = str(exc).strip().splitlines()[:1]
    return f"{type(exc).__name__}: {first[0] if first else ''}"


@asynccontextmanager
async def translated(health: StoreHealth, operation: str) -> AsyncIterator[None]:
    """Run the block; a psycopg error in it is counted in `health` and raised as
    `StoreUnavailable(operation)`. A `write` that completes ends the episode; a call that was
    still waiting for the pool when another one ended it does not start a new one."""
    began = health.clock()
    try:
        yield
    except PsycopgError as exc:
        error = describe_error(exc)
        health.failed(operation, error, began=began)
        raise StoreUnavailable(f"state store {operation}: {error}", operation=operation) from exc
    if operation == "write":
        health.wrote()


class Database:
    """The pool as the daemon uses it: each connection's errors translated and counted."""

    def __init__(self, pool: Pool, health: StoreHealth) -> None:
        self.pool = pool
        self.health = health

    @asynccontextmanager
    async def connection(
        self, operation: str, *, wait: float | None = None
    ) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """A pooled connection for one unit of work (`read` or `write`, the metric's label).

        Waiting for the pool (at most `wait` seconds, else the pool's own timeout), the
        statements, and the commit or rollback when the block ends are all inside the
        translation. While the server is down the pool cannot connect and the wait is what
        fails: a caller on a schedule (the lease's renewals) passes a `wait` shorter than its
        period.
        """
        async with (
            translated(self.health, operation),
            self.pool.connection(timeout=wait) as conn,
        ):
            yield conn
