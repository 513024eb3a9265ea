"""keyCRM's request budget, shared through PostgreSQL so a new leader cannot overspend it.

keyCRM counts requests per API key (and IP) in a sliding minute, whichever replica sent them.
The in-process `RequestBudget` paces one process's requests; the leader also records each
request here when its answer comes back, and a replica that takes the lease over loads the last
window's requests (`recent_ages` into `RequestBudget.preload`) before it sends anything. Times
are the database's clock, so replicas need not agree on theirs. Rows older than the window are
pruned as new ones are recorded: the table holds about one window's worth per merchant.

Recording is not fenced: a request a stale leader sent did reach keyCRM, and counting it only
makes the new leader more careful.
"""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

__all__ = ["WINDOW", "count_recent", "prune", "recent_ages", "record"]

#: keyCRM's window, seconds.
WINDOW = 60.0


async def record(
    conn: AsyncConnection[TupleRow], merchant: str, *, count: int = 1, ago: float = 0.0
) -> None:
    """Record `count` requests answered `ago` seconds ago (now, usually); prune old ones."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO keycrm_requests (merchant, at)"
            " SELECT %s, clock_timestamp() - make_interval(secs => %s) FROM generate_series(1, %s)",
            (merchant, ago, count),
        )
        await _prune(conn, merchant, 2 * WINDOW)


async def count_recent(
    conn: AsyncConnection[TupleRow], merchant: str, window: float = WINDOW
) -> int:
    """How many requests were answered in the last `window` seconds."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT count(*) FROM keycrm_requests"
            " WHERE merchant = %s AND at > clock_timestamp() - make_interval(secs => %s)",
            (merchant, window),
        )
        row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def recent_ages(
    conn: AsyncConnection[TupleRow], merchant: str, window: float = WINDOW
) -> list[float]:
    """How many seconds ago each request of the last `window` was answered, oldest first."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT extract(epoch FROM clock_timestamp() - at)::float8 FROM keycrm_requests"
            " WHERE merchant = %s AND at > clock_timestamp() - make_interval(secs => %s)"
            " ORDER BY at",
            (merchant, window),
        )
        return [float(row[0]) for row in await cursor.fetchall()]


async def prune(conn: AsyncConnection[TupleRow], merchant: str, window: float = WINDOW) -> int:
    """Forget requests older than `window`; return how many."""
    async with conn.transaction():
        return await _prune(conn, merchant, window)


async def _prune(conn: AsyncConnection[TupleRow], merchant: str, window: float) -> int:
    cursor = await conn.execute(
        "DELETE FROM keycrm_requests"
        " WHERE merchant = %s AND at <= clock_timestamp() - make_interval(secs => %s)",
        (merchant, window),
    )
    return cursor.rowcount
