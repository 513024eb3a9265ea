"""Connections to PostgreSQL that stay correct behind PgBouncer in transaction mode.

Behind a transaction-mode pooler each transaction may run on a different server session, so
nothing here keeps session state: prepared statements are off (`prepare_threshold=None`; psycopg
would otherwise prepare a query on its sixth run and find it missing on the next session), no
`SET`, no temporary tables, and no session advisory locks. Locks that must last longer than a
statement are row locks or `pg_advisory_xact_lock`, which end with their transaction. LISTEN
is the one exception (it needs a session): the look-up queue's listener opens its own direct
connection, and the queue is polled as well, so a pooler that drops notifications only delays
a wake-up.

The password travels beside the DSN, never in it (see `daemon.config.dsn`).
"""

from __future__ import annotations

import logging
import select
from typing import Any

from psycopg import AsyncConnection, OperationalError
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

__all__ = ["Pool", "check_idle", "connect", "connect_kwargs", "open_pool"]

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]


def connect_kwargs(password: str | None = None) -> dict[str, Any]:
    """Connection parameters every connection gets: no prepared statements, a name to find us."""
    kwargs: dict[str, Any] = {"prepare_threshold": None, "application_name": "stocksync"}
    if password is not None:
        kwargs["password"] = password
    return kwargs


async def connect(
    dsn: str, *, password: str | None = None, autocommit: bool = False
) -> AsyncConnection[TupleRow]:
    """One direct connection (the queue's listener; tools): the same parameters as the pool's."""
    return await AsyncConnection.connect(dsn, autocommit=autocommit, **connect_kwargs(password))


async def check_idle(conn: AsyncConnection[TupleRow]) -> None:
    """The pool's check of a connection it hands out; raises if the connection is dead.

    An idle connection's socket has nothing to read: a server that restarted, failed over or
    ended the session (an idle timeout, `pg_terminate_backend`) has sent its goodbye or closed
    it, and only then does the full check (a round trip) run, which fails and makes the pool
    replace the connection. A live one costs a poll of its socket, not a round trip before
    every transaction (a third of a claim's wait while the event loop was busy, issue 21).
    """
    if conn.closed:
        raise OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)


async def open_pool(
    dsn: str,
    *,
    password: str | None = None,
    min_size: int = 1,
    max_size: int = 8,
    acquire_timeout: float = 10.0,
) -> Pool:
    """An open pool; `acquire_timeout` bounds the wait for a connection (and for the first).

    Every connection is checked when handed out, so one that died in a failover is replaced
    instead of failing the caller's transaction (`check_idle`: a round trip only when the
    server said something since the connection was last used). While the server is away the
    pool retries each connection with a doubling delay; past `acquire_timeout` it gives that
    attempt up and the next caller starts a fresh one, so a server back after a long outage is
    reconnected within seconds, not after a delay that doubled all along (up to minutes).
    """
    # The pool warns at every failed connection attempt: several a second for as long as the
    # server is away. The daemon logs an outage once (`store.unavailable`,
    # `daemon.store.pg.faults`).
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    pool: Pool = AsyncConnectionPool(
        dsn,
        kwargs=connect_kwargs(password),
        min_size=min_size,
        max_size=max_size,
        timeout=acquire_timeout,
        reconnect_timeout=acquire_timeout,
        open=False,
        name="stocksync",
        check=check_idle,
    )
    try:
        await pool.open(wait=True, timeout=acquire_timeout)
    except BaseException:
        await pool.close()  # its workers would go on trying to connect
        raise
    return pool
