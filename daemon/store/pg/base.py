"""The PostgreSQL store's connections, transactions and locks, and its item load/save.

The backend keeps the same contract as SQLite, for several replicas on one database; its calls
(records.py, queue.py, reading.py) build on `PostgresBase`, which holds everything below.

Each call is one transaction on a pooled connection (psycopg's async pool; safe behind PgBouncer
in transaction mode, see `daemon.store.pg.connect`). Item states change only through
`daemon.store.lifecycle`, exactly as in SQLite: a write loads the rows, applies the pure
transitions and writes them back. A batch goes in one statement per table (`unnest` of one
array per column), never one per row: a statement's parse, plan and trigger cost the same for one
row as for a hundred, and the item counts are kept per statement (migration 5).

SQLite runs one call at a time; here calls run side by side on several connections, so each
read-modify-write takes transaction-scoped advisory locks first: writes to one channel's items
take that channel's lock (and a shared lock on all items), calls that move items of every
channel (`recover`, `force_all`, `release_held`) take the all-items lock exclusively, and
writes to keyCRM records take the records lock. A claim alone takes no channel lock: it skips
and locks the rows it takes, and the other writes lock the rows they load (see `_write`). The
locks end with the transaction, so nothing leaks through a pooler, and reads take none (MVCC).

Every connection comes through `daemon.store.pg.faults.Database`: any psycopg error (a restart, a
lost connection, a pool that cannot connect) is `StoreUnavailable`, counted in `health`.

With a `fence` (the lease keeper's `lease`), every write first checks, in its own transaction,
that this replica still holds the merchant's lease under its epoch (`daemon.store.pg.lease.fence`):
a replica that lost the lease writes nothing and gets `LeaseLost`.

A store is one merchant's: every transaction first scopes its names to the merchant's schema
(`daemon.store.pg.merchants.scope`), and its advisory lock keys mix the merchant in, so stores
of many merchants share one pool (`daemon.store.pg.stores`) and never wait for each other.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, LiteralString, Self

from psycopg import AsyncConnection, AsyncCursor, OperationalError
from psycopg import Error as PsycopgError
from psycopg.rows import TupleRow

from daemon.config.dsn import describe
from daemon.core.errors import StateUnusable
from daemon.store.health import StoreHealth
from daemon.store.lifecycle import Item
from daemon.store.pg.connect import Pool, open_pool
from daemon.store.pg.faults import Database
from daemon.store.pg.lease import Lease, LeaseLost, fence_held, fence_sent, lost
from daemon.store.pg.merchants import DEFAULT_MERCHANT, SCOPE, lock_key, prepare, quoted
from daemon.store.pg.migrate import migrate
from daemon.store.rows import HistoryValues
from daemon.store.rows import item as _item
from daemon.store.sqlite.schema import ITEM_COLUMNS

__all__ = [
    "ALL_ITEMS",
    "CHANNEL_CLASS",
    "COLUMNS",
    "HISTORY_PER_ITEM",
    "LOAD",
    "PAGE",
    "RECORDS",
    "TRIM_HISTORY",
    "Conn",
    "PostgresBase",
    "channel_class",
    "columns",
]

PAGE = 5000  # rows per transaction of a long job
HISTORY_PER_ITEM = 100  # as SQLiteStore

#: ITEM_COLUMNS as one literal (psycopg takes only literal SQL); checked equal below.
COLUMNS: LiteralString = (
    "channel, key, desired, changed_at, status, diverged_at, acked, acked_at, sent, forced, "
    "priority, attempts, next_attempt, due_at, last_error, held_scan"
)
assert ", ".join(ITEM_COLUMNS) == COLUMNS
#: The items' columns as arrays, one per column, in `COLUMNS` order (`columns(_row(...))`).
_ITEM_ARRAYS: LiteralString = (
    "%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::float8[], %s::text[],"
    " %s::float8[], %s::text[], %s::bool[], %s::int4[], %s::int4[], %s::float8[], %s::float8[],"
    " %s::text[], %s::int8[]"
)
#: A batch of items in one statement (one parse, plan and round trip, not one per row).
_UPSERT: LiteralString = (
    "INSERT INTO items (" + COLUMNS + ") SELECT * FROM unnest(" + _ITEM_ARRAYS + ") "
    "ON CONFLICT (channel, key) DO UPDATE SET desired = excluded.desired, "
    "changed_at = excluded.changed_at, status = excluded.status, "
    "diverged_at = excluded.diverged_at, acked = excluded.acked, acked_at = excluded.acked_at, "
    "sent = excluded.sent, forced = excluded.forced, priority = excluded.priority, "
    "attempts = excluded.attempts, next_attempt = excluded.next_attempt, "
    "due_at = excluded.due_at, last_error = excluded.last_error, held_scan = excluded.held_scan"
)
#: History rows (channel, key, before, after, outcome, error, at) in one statement; ids follow
#: the rows' order, which `history` sorts ties of `at` by.
_HISTORY: LiteralString = (
    "INSERT INTO history (channel, key, before, after, outcome, error, at)"
    " SELECT c, k, b, a, o, e, t FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::text[], %s::float8[]) WITH ORDINALITY AS u(c, k, b, a, o, e, t, n)"
    " ORDER BY n"
)
#: A channel's items by key: one primary-key probe per wanted key, whatever the planner
#: believes. Before the table has statistics (a fresh database's first minute, a first import)
#: `key = ANY(...)` or a join would read all of the channel's items and filter them.
LOAD: LiteralString = (
    "SELECT " + COLUMNS + " FROM unnest(%s::text[]) AS wanted(wanted_key)"
    " CROSS JOIN LATERAL (SELECT * FROM items"
    "  WHERE items.channel = %s AND items.key = wanted_key LIMIT 1 FOR UPDATE) AS items"
)
#: The history of the given keys beyond the newest N: index probes per key (the laterals) and
#: by id, for the same reason (a join would read the channel's whole history).
TRIM_HISTORY: LiteralString = (
    "DELETE FROM history WHERE id = ANY(ARRAY("
    " SELECT old.id FROM unnest(%s::text[]) AS k(key)"
    " CROSS JOIN LATERAL (SELECT at FROM history WHERE channel = %s"
    "  AND key = k.key ORDER BY at DESC LIMIT 1 OFFSET %s) AS oldest_kept"
    " CROSS JOIN LATERAL (SELECT id FROM history WHERE channel = %s"
    "  AND key = k.key AND at < oldest_kept.at OFFSET 0) AS old))"
)

# Advisory locks (transaction-scoped), by name; each store's keys mix its merchant in
# (`merchants.lock_key`): one bigint key space for the two store-wide locks, the
# (class, hash) space for per-channel locks with the merchant's class.
ALL_ITEMS = 0x737473796E630001
RECORDS = 0x737473796E630002
CHANNEL_CLASS = 0x73737963


def channel_class(merchant: str) -> int:
    """The int4 class of the merchant's per-channel locks (`hashtext(channel)` the other half)."""
    return lock_key(merchant, CHANNEL_CLASS) >> 32


def _float(value: float | None) -> float | None:
    """As float: a float8[] array must not mix ints (a clock's whole second) with floats."""
    return None if value is None else float(value)


def _row(item: Item) -> tuple[Any, ...]:
    return (
        item.channel,
        item.key,
        item.desired,
        float(item.changed_at),
        str(item.status),
        _float(item.diverged_at),
        item.acked,
        _float(item.acked_at),
        item.sent,
        bool(item.forced),
        item.priority,
        item.attempts,
        float(item.next_attempt),
        _float(item.due_at),
        item.last_error,
        item.held_scan,
    )


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: the parameters of an `unnest` of a batch."""
    return [[row[i] for row in rows] for i in range(width)]


Conn = AsyncConnection[TupleRow]


class PostgresBase:
    """A pool, its fenced and locked transactions; see the module docstring."""

    def __init__(
        self,
        pool: Pool,
        *,
        merchant: str = DEFAULT_MERCHANT,
        fence: Callable[[], Lease | None] | None = None,
        owns_pool: bool = False,
        clock: Callable[[], float] | None = None,
        location: str = "postgresql",
        history_per_item: int = HISTORY_PER_ITEM,
        health: StoreHealth | None = None,
    ) -> None:
        self._pool = pool
        #: whose state this is: its schema must exist (`merchants.prepare`; `open` does it)
        self.merchant = merchant
        self._locks = {name: lock_key(merchant, name) for name in (ALL_ITEMS, RECORDS)}
        self._channel_class = channel_class(merchant)
        self._path = quoted(merchant)
        #: shared with the lease keeper and the look-up queue of a replica
        #: (`daemon.store.pg.faults`)
        self.health = health or StoreHealth(location)
        self._db = Database(pool, self.health)
        #: history rows kept per item at most (the newest), besides `history_retention`
        self.history_per_item = history_per_item
        self._fence = fence
        self._owns_pool = owns_pool
        self._clock = clock or time.time
        #: (channel, "next" | "count") -> (the claim's `now`, its answer): what was left due
        #: when this store's last claim of the channel committed, for the dispatcher's next
        #: `next_due` and `count_due` (each used once; `queue.PostgresQueue.claim`). Any other
        #: write to items drops them all, as may its change (a new debounce, a held zero).
        self._hints: dict[tuple[str, str], tuple[float, float]] = {}
        #: counts the writes that dropped them: a claim whose answer raced one keeps none
        self._moves = 0

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        merchant: str = DEFAULT_MERCHANT,
        password: str | None = None,
        fence: Callable[[], Lease | None] | None = None,
        max_size: int = 8,
        acquire_timeout: float = 10.0,
    ) -> Self:
        """Open a pool on `dsn`, bring the database and the merchant's schema up to date, and
        own the pool (one merchant; for many on one pool, `daemon.store.pg.stores`)."""
        location = describe(dsn)
        try:
            pool = await open_pool(
                dsn, password=password, max_size=max_size, acquire_timeout=acquire_timeout
            )
        except OperationalError as exc:
            raise StateUnusable(f"{location}: cannot reach the database ({exc})") from exc
        try:
            async with pool.connection() as conn:
                await migrate(conn)
                await prepare(conn, merchant)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, merchant=merchant, fence=fence, owns_pool=True, location=location)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Conn]:
        """A read transaction, pipelined: its statements travel together, one round trip until
        the body first needs a result and one for the commit."""
        async with self._db.connection("read") as conn, conn.pipeline(), conn.transaction():
            await conn.execute("SELECT " + SCOPE, (self._path,))
            yield conn

    async def _select(self, query: LiteralString, params: Any = None) -> list[TupleRow]:
        """One read statement's rows in one round trip: begin, scope, the query and the commit
        sent together (`_read` waits for the query's rows before it sends the commit)."""
        async with self._db.connection("read") as conn:
            try:
                async with conn.pipeline():
                    await conn.execute("SELECT " + SCOPE, (self._path,))
                    cursor = await conn.execute(query, params)
                    await conn.execute("COMMIT")
            except BaseException:
                with suppress(Exception):
                    await conn.rollback()
                raise
            return await cursor.fetchall()

    @asynccontextmanager
    async def _write(
        self,
        *,
        channel: str | None = None,
        lock: int | None = None,
        claim: bool = False,
        keeps_due: bool = False,
        then: Callable[[Conn], Awaitable[None]] | None = None,
    ) -> AsyncIterator[Conn]:
        """A write transaction: fenced by the lease (if any), then the advisory locks.

        A `claim` takes only the shared lock on all items, not its channel's: it locks the
        rows it takes (`SKIP LOCKED`), and every other write locks the rows it loads
        (`FOR UPDATE`), so neither can write back over the other's change. The fence comes
        first in every transaction, then the advisory locks, then the row locks: a takeover
        waiting for the fenced transactions never waits on a lock one of them waits for.

        Pipelined: the statements go to the server without waiting for each other, and a round
        trip is paid only where the body reads a result, and once for the commit. A body that
        reads its results after the block (the cursors keep them) costs one round trip in all:
        begin, fence, locks, its statements and the commit together. A replica that lost the
        lease makes its transaction read-only in the fence (`lease.fence_sent`), so it writes
        nothing, and `LeaseLost` is raised once the fence's answer is read.

        A write that may move items (any under a channel's lock or the all-items lock) drops
        the last claims' answers of what is due (`_hints`), unless it `keeps_due`: it moves
        no pending item (a claim, an acknowledgement of items `sending`). `then` sends more
        statements after the commit, in their own transaction, with the same round trip.

        Every commit waits for the WAL's flush (as the server is configured): a claim or an
        acknowledgement that a crash of the server took back would let a second request for an
        item leave while the first is on the wire, or leave an item `sending` that no request
        carries (README, Scale: why `synchronous_commit` stays on).
        """
        moves = not (claim or keeps_due) and (channel is not None or lock == ALL_ITEMS)
        if moves:
            self._forget_due()
        try:
            async with self._write_fenced(channel, lock, claim, then) as conn:
                yield conn
        finally:
            if moves:
                self._forget_due()

    def _forget_due(self) -> None:
        self._hints.clear()
        self._moves += 1

    @asynccontextmanager
    async def _write_fenced(
        self,
        channel: str | None,
        lock: int | None,
        claim: bool,
        then: Callable[[Conn], Awaitable[None]] | None,
    ) -> AsyncIterator[Conn]:
        """`_write` without the bookkeeping of `_hints`."""
        async with self._db.connection("write") as conn:
            fenced: tuple[AsyncCursor[TupleRow], Lease] | None = None
            try:
                async with conn.pipeline():
                    async with conn.transaction():
                        if self._fence is not None:
                            lease = self._fence()
                            if lease is None:
                                raise LeaseLost("this replica does not hold the lease")
                            fenced = (await fence_sent(conn, lease), lease)
                        await conn.execute(*self._prelude(channel, lock, claim))
                        yield conn
                    if then is not None:
                        await then(conn)
            except PsycopgError:
                # A write the fence made fail, or a fault (then the error stands).
                if fenced is not None and await fence_held(fenced[0]) is False:
                    raise lost(fenced[1]) from None
                raise
            if fenced is not None and not await fence_held(fenced[0]):
                raise lost(fenced[1])

    def _prelude(
        self, channel: str | None, lock: int | None, claim: bool
    ) -> tuple[LiteralString, tuple[object, ...]]:
        """The statement after the fence: the merchant's scope and the advisory locks."""
        all_items, path = self._locks[ALL_ITEMS], self._path
        scope: LiteralString = "SELECT " + SCOPE
        if claim:
            return scope + ", pg_advisory_xact_lock_shared(%s::int8)", (path, all_items)
        if channel is not None:
            return (
                scope + ", pg_advisory_xact_lock_shared(%s::int8),"
                " pg_advisory_xact_lock(%s::int4, hashtext(%s))",
                (path, all_items, self._channel_class, channel),
            )
        if lock is not None:
            return scope + ", pg_advisory_xact_lock(%s::int8)", (path, self._locks[lock])
        return scope, (path,)

    @staticmethod
    async def _rowcount(conn: Conn, query: LiteralString, params: Any) -> int:
        """Run `query` and wait for the rows it changed (inside the pipelined transaction of
        `_write`, a statement's count is known only once the pipeline synced)."""
        async with conn.pipeline():
            cursor = await conn.execute(query, params)
        return cursor.rowcount

    @staticmethod
    async def _load(conn: Conn, channel: str, keys: Sequence[str]) -> dict[str, Item]:
        cursor = await conn.execute(LOAD, (list(keys), channel))
        return {row[1]: _item(row) for row in await cursor.fetchall()}

    @staticmethod
    async def _save(conn: Conn, items: Sequence[Item]) -> None:
        """Write `items` back in one statement; a key given twice keeps its last state, as one
        upsert per row did (one statement may not touch a row twice)."""
        rows = {(item.channel, item.key): _row(item) for item in items}
        if rows:
            await conn.execute(_UPSERT, columns([rows[k] for k in sorted(rows)], 16))

    @staticmethod
    async def _history(conn: Conn, rows: Sequence[HistoryValues]) -> None:
        if rows:
            at = [float(row[6]) for row in rows]
            await conn.execute(_HISTORY, [*columns(rows, 6), at])

    async def close(self) -> None:
        if self._owns_pool:
            await self._pool.close()
