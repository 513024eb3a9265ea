"""The PostgreSQL backend: the same contract as SQLite, for several replicas on one database.

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
a replica that lost the lease writes nothing and gets `LeaseLost`. One merchant per database.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, LiteralString

from psycopg import AsyncConnection, OperationalError
from psycopg.rows import TupleRow

from daemon.config.dsn import describe
from daemon.core.errors import StateUnusable
from daemon.core.models import (
    CatalogEntry,
    ItemValue,
    StockLevel,
    StockRecord,
    Value,
    Verdict,
    plain,
)
from daemon.rules.guard import ScanGuard
from daemon.rules.plan import Contribution
from daemon.store import lifecycle
from daemon.store.codec import encode_catalog, encode_stock
from daemon.store.health import StoreHealth
from daemon.store.lifecycle import Item, Status, Timing
from daemon.store.pg.connect import Pool, open_pool
from daemon.store.pg.faults import Database
from daemon.store.pg.lease import Lease, LeaseLost, fence
from daemon.store.pg.migrate import migrate
from daemon.store.protocol import HistoryRow, ItemRow, Settled, Store
from daemon.store.records import record_from, zeroed
from daemon.store.sqlite.schema import ITEM_COLUMNS

__all__ = ["PostgresStore"]

_PAGE = 5000  # rows per transaction of a long job
HISTORY_PER_ITEM = 100  # as SQLiteStore

#: ITEM_COLUMNS as one literal (psycopg takes only literal SQL); checked equal below.
_COLUMNS: LiteralString = (
    "channel, key, desired, changed_at, status, diverged_at, acked, acked_at, sent, forced, "
    "priority, attempts, next_attempt, due_at, last_error, held_scan"
)
assert ", ".join(ITEM_COLUMNS) == _COLUMNS
#: The items' columns as arrays, one per column, in `_COLUMNS` order (`_columns(_row(...))`).
_ITEM_ARRAYS: LiteralString = (
    "%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::float8[], %s::text[],"
    " %s::float8[], %s::text[], %s::bool[], %s::int4[], %s::int4[], %s::float8[], %s::float8[],"
    " %s::text[], %s::int8[]"
)
#: A batch of items in one statement (one parse, plan and round trip, not one per row).
_UPSERT: LiteralString = (
    "INSERT INTO items (" + _COLUMNS + ") SELECT * FROM unnest(" + _ITEM_ARRAYS + ") "
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
_LOAD: LiteralString = (
    "SELECT " + _COLUMNS + " FROM unnest(%s::text[]) AS wanted(wanted_key)"
    " CROSS JOIN LATERAL (SELECT * FROM items"
    "  WHERE items.channel = %s AND items.key = wanted_key LIMIT 1 FOR UPDATE) AS items"
)
#: The history of the given keys beyond the newest N: index probes per key (the laterals) and
#: by id, for the same reason (a join would read the channel's whole history).
_TRIM_HISTORY: LiteralString = (
    "DELETE FROM history WHERE id = ANY(ARRAY("
    " SELECT old.id FROM unnest(%s::text[]) AS k(key)"
    " CROSS JOIN LATERAL (SELECT at FROM history WHERE channel = %s"
    "  AND key = k.key ORDER BY at DESC LIMIT 1 OFFSET %s) AS oldest_kept"
    " CROSS JOIN LATERAL (SELECT id FROM history WHERE channel = %s"
    "  AND key = k.key AND at < oldest_kept.at OFFSET 0) AS old))"
)
_NO_TIMING = Timing(0.0, 0.0)

# Advisory lock keys (transaction-scoped). One bigint key space for the two global locks, the
# (class, hash) space for per-channel locks.
_ALL_ITEMS = 0x737473796E630001
_RECORDS = 0x737473796E630002
_CHANNEL_CLASS = 0x73737963


def _value(text: str | None) -> Value | None:
    return None if text is None else Value.decode(text)


def _item(row: Sequence[Any]) -> Item:
    values = list(row)
    values[4] = Status(values[4])
    return Item(*values)


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


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: the parameters of an `unnest` of a batch."""
    return [[row[i] for row in rows] for i in range(width)]


Conn = AsyncConnection[TupleRow]


class PostgresStore:
    """The state store in PostgreSQL; see the module docstring for locking and fencing."""

    def __init__(
        self,
        pool: Pool,
        *,
        fence: Callable[[], Lease | None] | None = None,
        owns_pool: bool = False,
        clock: Callable[[], float] | None = None,
        location: str = "postgresql",
        history_per_item: int = HISTORY_PER_ITEM,
        health: StoreHealth | None = None,
    ) -> None:
        self._pool = pool
        #: shared with the lease keeper and the look-up queue of a replica
        #: (`daemon.store.pg.faults`)
        self.health = health or StoreHealth(location)
        self._db = Database(pool, self.health)
        #: history rows kept per item at most (the newest), besides `history_retention`
        self.history_per_item = history_per_item
        self._fence = fence
        self._owns_pool = owns_pool
        self._clock = clock or time.time

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        password: str | None = None,
        fence: Callable[[], Lease | None] | None = None,
        max_size: int = 8,
        acquire_timeout: float = 10.0,
    ) -> PostgresStore:
        """Open a pool on `dsn`, bring the schema up to date, and own the pool."""
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
        except BaseException:
            await pool.close()
            raise
        return cls(pool, fence=fence, owns_pool=True, location=location)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Conn]:
        async with self._db.connection("read") as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _write(
        self, *, channel: str | None = None, lock: int | None = None, claim: bool = False
    ) -> AsyncIterator[Conn]:
        """A write transaction: fenced by the lease (if any), then the advisory locks.

        A `claim` takes only the shared lock on all items, not its channel's: it locks the
        rows it takes (`SKIP LOCKED`), and every other write locks the rows it loads
        (`FOR UPDATE`), so neither can write back over the other's change. The fence comes
        first in every transaction, then the advisory locks, then the row locks: a takeover
        waiting for the fenced transactions never waits on a lock one of them waits for.
        """
        async with self._db.connection("write") as conn, conn.transaction():
            if self._fence is not None:
                lease = self._fence()
                if lease is None:
                    raise LeaseLost("this replica does not hold the lease")
                await fence(conn, lease)
            if claim:
                await conn.execute("SELECT pg_advisory_xact_lock_shared(%s::int8)", (_ALL_ITEMS,))
            elif channel is not None:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock_shared(%s::int8),"
                    " pg_advisory_xact_lock(%s::int4, hashtext(%s))",
                    (_ALL_ITEMS, _CHANNEL_CLASS, channel),
                )
            elif lock is not None:
                await conn.execute("SELECT pg_advisory_xact_lock(%s::int8)", (lock,))
            yield conn

    @staticmethod
    async def _load(conn: Conn, channel: str, keys: Sequence[str]) -> dict[str, Item]:
        cursor = await conn.execute(_LOAD, (list(keys), channel))
        return {row[1]: _item(row) for row in await cursor.fetchall()}

    @staticmethod
    async def _save(conn: Conn, items: Sequence[Item]) -> None:
        """Write `items` back in one statement; a key given twice keeps its last state, as one
        upsert per row did (one statement may not touch a row twice)."""
        rows = {(item.channel, item.key): _row(item) for item in items}
        if rows:
            await conn.execute(_UPSERT, _columns([rows[k] for k in sorted(rows)], 16))

    @staticmethod
    async def _history(conn: Conn, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            at = [float(row[6]) for row in rows]
            await conn.execute(_HISTORY, [*_columns(rows, 6), at])

    # --- records -------------------------------------------------------------------------------

    @staticmethod
    async def _existing(
        conn: Conn, skus: Sequence[str]
    ) -> dict[str, tuple[str | None, str | None]]:
        cursor = await conn.execute(
            "SELECT sku, stock, catalog FROM records WHERE sku = ANY(%s)", (list(skus),)
        )
        return {sku: (stock, catalog) for sku, stock, catalog in await cursor.fetchall()}

    async def save_stock(self, levels: Sequence[StockLevel], scan: int | None) -> list[StockRecord]:
        now = self._clock()
        changed: list[StockRecord] = []
        rows: dict[str, str] = {}  # one row per SKU: the last level given wins, as before
        async with self._write(lock=_RECORDS) as conn:
            old = await self._existing(conn, [level.sku for level in levels])
            for level in levels:
                text = encode_stock(level)
                stock, catalog = old.get(level.sku, (None, None))
                if text != stock:
                    record = record_from(level.sku, text, catalog)
                    assert record is not None
                    changed.append(record)
                rows[level.sku] = text
            if rows:
                skus = sorted(rows)
                await conn.execute(
                    "INSERT INTO records (sku, stock, seen_scan, updated_at)"
                    " SELECT sku, stock, %s::int8, %s::float8"
                    " FROM unnest(%s::text[], %s::text[]) AS r(sku, stock)"
                    " ON CONFLICT (sku) DO UPDATE SET stock = excluded.stock,"
                    " seen_scan = GREATEST(records.seen_scan, excluded.seen_scan),"
                    " updated_at = excluded.updated_at",
                    (scan or 0, float(now), skus, [rows[sku] for sku in skus]),
                )
        return changed

    async def save_catalog(self, entries: Sequence[CatalogEntry]) -> list[StockRecord]:
        now = self._clock()
        changed: list[StockRecord] = []
        rows: dict[str, str] = {}  # one row per SKU: the last entry given wins, as before
        async with self._write(lock=_RECORDS) as conn:
            old = await self._existing(conn, [entry.sku for entry in entries])
            for entry in entries:
                text = encode_catalog(entry)
                stock, catalog = old.get(entry.sku, (None, None))
                if text == catalog:
                    continue
                record = record_from(entry.sku, stock, text)
                if record is not None:
                    changed.append(record)
                rows[entry.sku] = text
            if rows:
                skus = sorted(rows)
                await conn.execute(
                    "INSERT INTO records (sku, catalog, updated_at)"
                    " SELECT sku, catalog, %s::float8"
                    " FROM unnest(%s::text[], %s::text[]) AS r(sku, catalog)"
                    " ON CONFLICT (sku) DO UPDATE SET catalog = excluded.catalog,"
                    " updated_at = excluded.updated_at",
                    (float(now), skus, [rows[sku] for sku in skus]),
                )
        return changed

    async def vanished(self, scan: int) -> list[StockRecord]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT sku, stock, catalog FROM records"
                " WHERE stock IS NOT NULL AND seen_scan < %s",
                (scan - 1,),
            )
            rows = await cursor.fetchall()
        gone = []
        for sku, stock, catalog in rows:
            record = record_from(sku, stock, catalog)
            zero = None if record is None else zeroed(record)
            if zero is not None:
                gone.append(zero)
        if gone:
            await self.save_stock([r.stock for r in gone], None)
        return gone

    async def records(self, after: str = "", limit: int = 500) -> list[StockRecord]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND sku > %s"
                " ORDER BY sku LIMIT %s",
                (after, limit),
            )
            rows = await cursor.fetchall()
        return [r for r in (record_from(*row) for row in rows) if r is not None]

    async def records_of(self, skus: Sequence[str]) -> list[StockRecord]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL"
                " AND sku = ANY(%s) ORDER BY sku",
                (sorted(set(skus)),),
            )
            rows = await cursor.fetchall()
        return [r for r in (record_from(*row) for row in rows) if r is not None]

    # --- planning ------------------------------------------------------------------------------

    async def replace_shares(
        self, channel: str, skus: Sequence[str], shares: Sequence[tuple[str, Contribution]]
    ) -> dict[str, list[Contribution]]:
        affected: set[str] = {share.key for _, share in shares}
        async with self._write(channel=channel) as conn:
            cursor = await conn.execute(
                "DELETE FROM shares WHERE channel = %s AND sku = ANY(%s) RETURNING key",
                (channel, list(skus)),
            )
            affected.update(key for (key,) in await cursor.fetchall())
            # One row per (sku, key): the last share given wins, as one upsert per row did.
            rows = {
                (sku, s.key): (sku, s.key, plain(s.quantity),
                               None if s.price is None else plain(s.price))
                for sku, s in shares
            }  # fmt: skip
            if rows:
                await conn.execute(
                    "INSERT INTO shares (channel, sku, key, quantity, price)"
                    " SELECT %s::text, *"
                    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
                    " ON CONFLICT (channel, sku, key)"
                    " DO UPDATE SET quantity = excluded.quantity, price = excluded.price",
                    (channel, *_columns([rows[k] for k in sorted(rows)], 4)),
                )
            result: dict[str, list[Contribution]] = {key: [] for key in affected}
            cursor = await conn.execute(
                "SELECT key, quantity, price FROM shares WHERE channel = %s AND key = ANY(%s)"
                " ORDER BY key, sku",
                (channel, sorted(affected)),
            )
            for key, quantity, price in await cursor.fetchall():
                result[key].append(
                    Contribution(key, Decimal(quantity), None if price is None else Decimal(price))
                )
        return result

    async def set_desired(
        self,
        channel: str,
        values: dict[str, Value],
        now: float,
        timing: Timing,
        guard: ScanGuard | None = None,
    ) -> int:
        writes: list[Item] = []
        waiting = 0
        async with self._write(channel=channel) as conn:
            current = await self._load(conn, channel, list(values))
            for key, value in values.items():
                text = value.encode()
                item = current.get(key)
                hold = None
                if guard is not None and lifecycle.zeroing(item, text):
                    hold = guard.hold(channel)
                changed = lifecycle.desire(
                    item, text, channel=channel, key=key, now=now, timing=timing, hold_scan=hold
                )
                if changed is None:
                    continue
                writes.append(changed)
                waiting += changed.status is Status.PENDING
            await self._save(conn, writes)
        return waiting

    # --- the work queue ------------------------------------------------------------------------

    async def claim(self, channel: str, now: float, limit: int) -> list[ItemValue]:
        # Without the channel's lock (see `_write`): the claims and settles of a channel's
        # batches in flight overlap instead of queueing behind each other.
        async with self._write(claim=True) as conn:
            cursor = await conn.execute(
                "SELECT " + _COLUMNS + " FROM items WHERE channel = %s AND status = 'pending'"
                " AND due_at <= %s ORDER BY priority, due_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (channel, now, limit),
            )
            items = [lifecycle.claim(_item(row)) for row in await cursor.fetchall()]
            await self._save(conn, items)
        return [ItemValue(item.key, Value.decode(item.desired)) for item in items]

    async def count_due(self, channel: str, now: float, limit: int) -> int:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM items WHERE channel = %s"
                " AND status = 'pending' AND due_at <= %s LIMIT %s) due",
                (channel, now, limit),
            )
            row = await cursor.fetchone()
        return 0 if row is None else int(row[0])

    async def next_due(self, channel: str) -> float | None:
        async with self._read() as conn:
            # The first item of each priority in due order, skipping from one priority to the
            # next through the index (a loose index scan): a few probes, where a MIN per
            # priority read every pending item, all of them during a resync, before each claim.
            cursor = await conn.execute(
                "WITH RECURSIVE firsts AS ("
                " (SELECT priority, due_at FROM items WHERE channel = %(c)s"
                "  AND status = 'pending' ORDER BY priority, due_at LIMIT 1)"
                " UNION ALL"
                " SELECT nxt.priority, nxt.due_at FROM firsts CROSS JOIN LATERAL ("
                "  SELECT priority, due_at FROM items WHERE channel = %(c)s"
                "  AND status = 'pending' AND priority > firsts.priority"
                "  ORDER BY priority, due_at LIMIT 1) AS nxt"
                ") SELECT MIN(due_at) FROM firsts",
                {"c": channel},
            )
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def settle(
        self,
        channel: str,
        verdicts: Sequence[Verdict],
        now: float,
        timing: Timing,
        backoff: Callable[[int], float],
    ) -> Settled:
        async with self._write(channel=channel) as conn:
            current = await self._load(conn, channel, [v.key for v in verdicts])
            done = lifecycle.settle_all(
                channel, current, verdicts, now, timing=timing, backoff=backoff
            )
            writes, history = done.writes, done.history
            await self._save(conn, writes)
            if history:
                await self._history(conn, history)
                # A bounded trail per item, whatever the retention (as in SQLite).
                await conn.execute(
                    _TRIM_HISTORY,
                    (sorted({v.key for v in verdicts}), channel, self.history_per_item - 1,
                     channel),
                )  # fmt: skip
        return Settled(done.propagated, done.attempts)

    async def release(
        self,
        channel: str,
        keys: Sequence[str],
        now: float,
        timing: Timing,
        *,
        sent: bool = True,
        not_before: float = 0.0,
    ) -> None:
        async with self._write(channel=channel) as conn:
            items = (await self._load(conn, channel, keys)).values()
            await self._save(
                conn,
                [
                    lifecycle.release(item, now, timing, sent=sent, not_before=not_before)
                    for item in items
                ],
            )

    async def recover(self, now: float, grace: Mapping[str, float] | None = None) -> int:
        wait = dict(grace or {})
        async with self._write(lock=_ALL_ITEMS) as conn:
            cursor = await conn.execute(
                "SELECT " + _COLUMNS + " FROM items WHERE status = 'sending'"
            )
            rows = await cursor.fetchall()
            items = [_item(row) for row in rows]
            await self._save(
                conn,
                [
                    lifecycle.release(
                        item, now, _NO_TIMING, not_before=now + wait.get(item.channel, 0.0)
                    )
                    for item in items
                ],
            )
        return len(rows)

    async def flush(self, channel: str, now: float) -> None:
        async with self._write(channel=channel) as conn:
            await conn.execute(
                "UPDATE items SET due_at = GREATEST(%s, next_attempt) WHERE channel = %s"
                " AND status = 'pending' AND due_at > GREATEST(%s, next_attempt)",
                (now, channel, now),
            )

    async def force_all(self, now: float) -> int:
        forced = 0
        after = ("", "")
        while True:
            async with self._write(lock=_ALL_ITEMS) as conn:
                cursor = await conn.execute(
                    "SELECT " + _COLUMNS + " FROM items WHERE (channel, key) > (%s, %s)"
                    " ORDER BY channel, key LIMIT %s",
                    (*after, _PAGE),
                )
                rows = await cursor.fetchall()
                await self._save(conn, [lifecycle.force(_item(row), now) for row in rows])
            forced += len(rows)
            if len(rows) < _PAGE:
                return forced
            after = (rows[-1][0], rows[-1][1])

    async def mark_drifted(
        self, channel: str, live: Sequence[tuple[str, Value]], now: float
    ) -> list[str]:
        seen = {key: value.encode() for key, value in live}
        moved: list[Item] = []
        history = []
        async with self._write(channel=channel) as conn:
            for item in (await self._load(conn, channel, list(seen))).values():
                before = item.acked
                if lifecycle.drifted(item, seen[item.key], now):
                    moved.append(item)
                    history.append(
                        (channel, item.key, before, seen[item.key], "drift",
                         "changed on the channel", float(now))
                    )  # fmt: skip
            await self._save(conn, moved)
            await self._history(conn, history)
        return [item.key for item in moved]

    async def reassert(self, channel: str, now: float) -> int:
        moved = 0
        after = ""
        while True:
            async with self._write(channel=channel) as conn:
                cursor = await conn.execute(
                    "SELECT " + _COLUMNS + " FROM items WHERE channel = %s AND key > %s"
                    " AND status = 'ok' ORDER BY key LIMIT %s",
                    (channel, after, _PAGE),
                )
                rows = await cursor.fetchall()
                await self._save(conn, [lifecycle.reassert(_item(row), now) for row in rows])
            moved += len(rows)
            if len(rows) < _PAGE:
                return moved
            after = rows[-1][1]

    async def items_page(self, channel: str, after: str, limit: int) -> list[ItemRow]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT channel, key, desired, acked, status, attempts, last_error, diverged_at,"
                " changed_at FROM items WHERE channel = %s AND key > %s ORDER BY key LIMIT %s",
                (channel, after, limit),
            )
            rows = await cursor.fetchall()
        return [
            ItemRow(c, k, Value.decode(d), _value(a), s, n, e, dv, ch)
            for c, k, d, a, s, n, e, dv, ch in rows
        ]

    async def release_held(
        self, channel: str | None, now: float, *, by: str | None = None
    ) -> dict[str, int]:
        released: Counter[str] = Counter()
        while True:
            async with self._write(lock=_ALL_ITEMS) as conn:
                if channel is None:
                    cursor = await conn.execute(
                        "SELECT " + _COLUMNS + " FROM items WHERE held_scan IS NOT NULL"
                        " LIMIT %s FOR UPDATE",
                        (_PAGE,),
                    )
                else:
                    cursor = await conn.execute(
                        "SELECT " + _COLUMNS + " FROM items WHERE held_scan IS NOT NULL"
                        " AND channel = %s LIMIT %s FOR UPDATE",
                        (channel, _PAGE),
                    )
                items = [_item(row) for row in await cursor.fetchall()]
                history = [
                    (i.channel, i.key, i.acked, i.desired, "released", by, float(now))
                    for i in items
                    if by is not None
                ]
                await self._save(conn, [lifecycle.release_held(item, now) for item in items])
                await self._history(conn, history)
            released.update(item.channel for item in items)
            if len(items) < _PAGE:
                return dict(released)

    # --- reading -------------------------------------------------------------------------------

    async def positive_acked(self) -> dict[str, int]:
        async with self._read() as conn:
            cursor = await conn.execute("SELECT channel, n FROM in_stock_counts WHERE n > 0")
            return {channel: int(count) for channel, count in await cursor.fetchall()}

    async def items(self, channel: str | None = None) -> list[ItemRow]:
        query: LiteralString = (
            "SELECT channel, key, desired, acked, status, attempts, last_error, diverged_at,"
            " changed_at FROM items"
        )
        async with self._read() as conn:
            if channel is None:
                cursor = await conn.execute(query + " ORDER BY channel, key")
            else:
                cursor = await conn.execute(
                    query + " WHERE channel = %s ORDER BY channel, key", (channel,)
                )
            rows = await cursor.fetchall()
        return [
            ItemRow(c, k, Value.decode(d), _value(a), s, n, e, dv, ch)
            for c, k, d, a, s, n, e, dv, ch in rows
        ]

    async def skus(self, channel: str, keys: Sequence[str]) -> dict[str, list[str]]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT key, sku FROM shares WHERE channel = %s AND key = ANY(%s) ORDER BY sku",
                (channel, list(keys)),
            )
            rows = await cursor.fetchall()
        found: dict[str, list[str]] = {}
        for key, sku in rows:
            found.setdefault(key, []).append(sku)
        return found

    async def counts(self) -> dict[str, dict[str, int]]:
        async with self._read() as conn:
            cursor = await conn.execute("SELECT channel, status, n FROM item_counts WHERE n > 0")
            rows = await cursor.fetchall()
        out: dict[str, dict[str, int]] = {}
        for channel, status, count in rows:
            out.setdefault(channel, {})[status] = int(count)
        return out

    async def oldest_pending(self) -> dict[str, float]:
        """One index seek per channel and status that has items waiting: no scan of the items."""
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT c.channel, (SELECT MIN(i.diverged_at) FROM items i"
                "  WHERE i.channel = c.channel AND i.status = c.status)"
                " FROM item_counts c WHERE c.status IN ('pending', 'sending') AND c.n > 0"
            )
            rows = await cursor.fetchall()
        oldest: dict[str, float] = {}
        for channel, first in rows:
            if first is not None:
                oldest[channel] = min(float(first), oldest.get(channel, float(first)))
        return oldest

    async def history(self, sku: str) -> list[HistoryRow]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT h.channel, h.key, h.before, h.after, h.outcome, h.error, h.at"
                " FROM history h WHERE EXISTS (SELECT 1 FROM shares s WHERE"
                " s.channel = h.channel AND s.key = h.key AND s.sku = %s) ORDER BY h.at, h.id",
                (sku,),
            )
            rows = await cursor.fetchall()
        return [
            HistoryRow(c, k, _value(b), Value.decode(a), o, e, at) for c, k, b, a, o, e, at in rows
        ]

    async def prune_history(self, before: float) -> int:
        pruned = 0
        while True:  # in pages: a month of history must not hold a transaction for seconds
            async with self._write() as conn:
                cursor = await conn.execute(
                    "DELETE FROM history WHERE id IN"
                    " (SELECT id FROM history WHERE at < %s LIMIT %s)",
                    (before, _PAGE),
                )
            pruned += cursor.rowcount
            if cursor.rowcount < _PAGE:
                return pruned

    async def get_meta(self, name: str) -> str | None:
        async with self._read() as conn:
            cursor = await conn.execute("SELECT value FROM meta WHERE name = %s", (name,))
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, name: str, value: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO meta (name, value) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    async def close(self) -> None:
        if self._owns_pool:
            await self._pool.close()


def _keeps_the_protocol(store: PostgresStore) -> Store:
    """Never called: mypy checks here that `PostgresStore` is a `Store` as the protocol grows."""
    return store
