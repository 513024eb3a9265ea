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
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

__all__ = ["Pool", "connect", "connect_kwargs", "open_pool"]

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
    instead of failing the caller's transaction. While the server is away the pool retries each
    connection with a doubling delay; past `acquire_timeout` it gives that attempt up and the
    next caller starts a fresh one, so a server back after a long outage is reconnected within
    seconds, not after a delay that doubled all along (up to minutes).
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
        check=AsyncConnectionPool.check_connection,
    )
    try:
        await pool.open(wait=True, timeout=acquire_timeout)
    except BaseException:
        await pool.close()  # its workers would go on trying to connect
        raise
    return pool
