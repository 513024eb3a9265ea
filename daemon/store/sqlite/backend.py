"""The embedded backend: SQLite in WAL mode, one file, worked from one thread of its own.

Every call runs in a worker thread, one at a time (a capacity limiter of one), so the event loop
never waits on the disk and calls never interleave inside a transaction. Long jobs (a resync over
every item) are cut into pages, each its own call, so other work gets in between.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from daemon.core.errors import StateUnusable, StoreUnavailable
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
from daemon.store.protocol import Enqueued, HistoryRow, ItemRow, LookupEntry, Settled
from daemon.store.records import record_from, zeroed
from daemon.store.sqlite.schema import ITEM_COLUMNS, migrate

__all__ = ["SQLiteStore"]

P = ParamSpec("P")
T = TypeVar("T")

_CHUNK = 500  # values per IN (...) list: well under SQLite's parameter limit
_WAL_LIMIT = 64 * 1024 * 1024  # bytes the WAL file keeps after a checkpoint
HISTORY_PER_ITEM = 100
_PAGE = 5000  # rows per call of a long job

_COLUMNS = ", ".join(ITEM_COLUMNS)
_UPSERT = (
    f"INSERT INTO items ({_COLUMNS}) VALUES ({', '.join('?' * len(ITEM_COLUMNS))}) "
    "ON CONFLICT (channel, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in ITEM_COLUMNS[2:])
)
_NO_TIMING = Timing(0.0, 0.0)


def _value(text: str | None) -> Value | None:
    return None if text is None else Value.decode(text)


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _in_clause(sql: str, chunk: Sequence[str]) -> str:
    """`sql` with its `{in}` filled by one placeholder per value (values stay bound parameters)."""
    return sql.replace("{in}", ",".join("?" * len(chunk)))


def _item(row: Sequence[Any]) -> Item:
    values = list(row)
    values[4] = Status(values[4])
    values[9] = bool(values[9])
    return Item(*values)


def _in_stock(acked: str | None) -> bool:
    return acked is not None and Value.decode(acked).is_positive


def _row(item: Item) -> tuple[Any, ...]:
    return (
        item.channel,
        item.key,
        item.desired,
        item.changed_at,
        str(item.status),
        item.diverged_at,
        item.acked,
        item.acked_at,
        item.sent,
        int(item.forced),
        item.priority,
        item.attempts,
        item.next_attempt,
        item.due_at,
        item.last_error,
        item.held_scan,
    )


class SQLiteStore:
    """SQLite in WAL mode, one file; see the module docstring for how it keeps off the loop."""

    def __init__(self, path: Path, *, history_per_item: int = HISTORY_PER_ITEM) -> None:
        self.health = StoreHealth(str(path))
        #: history rows kept per item at most (the newest), besides `history_retention`
        self.history_per_item = history_per_item
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StateUnusable(f"{path}: cannot open the state file ({exc})") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            # Keep the WAL from growing past what one checkpoint leaves behind.
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            migrate(self._db)
        except sqlite3.Error as exc:
            self._db.close()
            raise StateUnusable(
                f"{path}: not a usable stocksync state file ({exc}). Move it aside to start "
                "afresh (the next scan rebuilds it; channels are pushed again), or restore a backup"
            ) from exc
        except BaseException:
            self._db.close()
            raise
        self._limiter: anyio.CapacityLimiter | None = None
        self._writing = False
        #: (status, in stock) of the items read in the current transaction, for the counters
        self._before: dict[tuple[str, str], tuple[Status, bool]] = {}
        self._clock = time.time

    async def _run(self, job: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(
            partial(self._guarded, job, *args, **kwargs), limiter=self._limiter
        )

    def _guarded(self, job: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one call in the store's thread; a failure of SQLite becomes a store fault."""
        self._writing = False
        try:
            return job(*args, **kwargs)
        except sqlite3.Error as exc:
            operation = "write" if self._writing else "read"
            self.health.failed(operation, str(exc))
            raise StoreUnavailable(f"state store {operation}: {exc}", operation=operation) from exc

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._writing = True
        self._before.clear()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self.health.wrote()

    def _select_in(
        self, sql: str, values: Sequence[str], channel: str | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of `sql` whose `IN ({in})` takes `values`, a chunk at a time."""
        for chunk in _chunks(values):
            params = tuple(chunk) if channel is None else (channel, *chunk)
            yield from self._db.execute(_in_clause(sql, chunk), params)

    def _load(self, channel: str, keys: Sequence[str]) -> dict[str, Item]:
        rows = self._select_in(
            f"SELECT {_COLUMNS} FROM items WHERE channel = ? AND key IN ({{in}})", keys, channel
        )
        return {row[1]: self._loaded(row) for row in rows}

    def _loaded(self, row: Sequence[Any]) -> Item:
        """An item read in this transaction; what it was is kept for the counters."""
        item = _item(row)
        self._before[(item.channel, item.key)] = (item.status, _in_stock(item.acked))
        return item

    def _write(self, items: Sequence[Item]) -> None:
        """Store items moved by the lifecycle, and keep the counts per status and in stock."""
        self._db.executemany(_UPSERT, [_row(item) for item in items])
        by_status: Counter[tuple[str, str]] = Counter()
        in_stock: Counter[str] = Counter()
        for item in items:
            status, positive = self._before.pop((item.channel, item.key), (None, False))
            now_positive = _in_stock(item.acked)
            if status is not item.status:
                by_status[(item.channel, str(item.status))] += 1
                if status is not None:
                    by_status[(item.channel, str(status))] -= 1
            if positive != now_positive:
                in_stock[item.channel] += 1 if now_positive else -1
        self._db.executemany(
            "INSERT INTO item_counts (channel, status, n) VALUES (?, ?, ?) "
            "ON CONFLICT (channel, status) DO UPDATE SET n = n + excluded.n",
            [(c, s, n) for (c, s), n in by_status.items() if n],
        )
        self._db.executemany(
            "INSERT INTO in_stock_counts (channel, n) VALUES (?, ?) "
            "ON CONFLICT (channel) DO UPDATE SET n = n + excluded.n",
            [(c, n) for c, n in in_stock.items() if n],
        )

    # --- records -------------------------------------------------------------------------------

    def _existing(self, skus: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        rows = self._select_in("SELECT sku, stock, catalog FROM records WHERE sku IN ({in})", skus)
        return {sku: (stock, catalog) for sku, stock, catalog in rows}

    async def save_stock(self, levels: Sequence[StockLevel], scan: int | None) -> list[StockRecord]:
        return await self._run(self._save_stock, levels, scan)

    def _save_stock(self, levels: Sequence[StockLevel], scan: int | None) -> list[StockRecord]:
        now = self._clock()
        changed: list[StockRecord] = []
        rows = []
        seen = []
        with self._tx():
            old = self._select_in(
                "SELECT sku, stock, catalog, digest FROM records WHERE sku IN ({in})",
                [level.sku for level in levels],
            )
            existing = {sku: (stock, catalog, digest) for sku, stock, catalog, digest in old}
            for level in levels:
                stock, catalog, digest = existing.get(level.sku, (None, None, None))
                if level.digest is not None and level.digest == digest:
                    # The same bytes as last time: the same level. Only the scan mark moves.
                    seen.append((scan, level.sku))
                    continue
                text = encode_stock(level)
                if text != stock:
                    record = record_from(level.sku, text, catalog)
                    assert record is not None
                    changed.append(record)
                rows.append((level.sku, text, level.digest, scan or 0, now))
            self._db.executemany(
                "INSERT INTO records (sku, stock, digest, seen_scan, updated_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (sku) DO UPDATE SET stock = excluded.stock, "
                "digest = excluded.digest, "
                "seen_scan = MAX(records.seen_scan, excluded.seen_scan), "
                "updated_at = CASE WHEN records.stock IS excluded.stock "
                "THEN records.updated_at ELSE excluded.updated_at END",
                rows,
            )
            if scan is not None and seen:
                self._db.executemany(
                    "UPDATE records SET seen_scan = ?1 WHERE sku = ?2 AND seen_scan < ?1", seen
                )
        return changed

    async def save_catalog(self, entries: Sequence[CatalogEntry]) -> list[StockRecord]:
        return await self._run(self._save_catalog, entries)

    def _save_catalog(self, entries: Sequence[CatalogEntry]) -> list[StockRecord]:
        now = self._clock()
        changed: list[StockRecord] = []
        rows = []
        with self._tx():
            old = self._existing([entry.sku for entry in entries])
            for entry in entries:
                text = encode_catalog(entry)
                stock, catalog = old.get(entry.sku, (None, None))
                if text == catalog:
                    continue
                record = record_from(entry.sku, stock, text)
                if record is not None:
                    changed.append(record)
                rows.append((entry.sku, text, now))
            self._db.executemany(
                "INSERT INTO records (sku, catalog, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (sku) DO UPDATE SET catalog = excluded.catalog, "
                "updated_at = excluded.updated_at",
                rows,
            )
        return changed

    async def vanished(self, scan: int) -> list[StockRecord]:
        gone = await self._run(self._vanished, scan)
        if gone:
            await self.save_stock([r.stock for r in gone], None)
        return gone

    def _vanished(self, scan: int) -> list[StockRecord]:
        rows = self._db.execute(
            "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND seen_scan < ?",
            (scan - 1,),
        ).fetchall()
        gone = []
        for sku, stock, catalog in rows:
            record = record_from(sku, stock, catalog)
            zero = None if record is None else zeroed(record)
            if zero is not None:
                gone.append(zero)
        return gone

    async def records(self, after: str = "", limit: int = 500) -> list[StockRecord]:
        return await self._run(self._records, after, limit)

    def _records(self, after: str, limit: int) -> list[StockRecord]:
        rows = self._db.execute(
            "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND sku > ? "
            "ORDER BY sku LIMIT ?",
            (after, limit),
        )
        return [r for r in (record_from(*row) for row in rows) if r is not None]

    async def records_of(self, skus: Sequence[str]) -> list[StockRecord]:
        return await self._run(self._records_of, skus)

    def _records_of(self, skus: Sequence[str]) -> list[StockRecord]:
        rows = self._select_in(
            "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND sku IN ({in})",
            sorted(set(skus)),
        )
        return sorted(
            (r for r in (record_from(*row) for row in rows) if r is not None),
            key=lambda r: r.sku,
        )

    # --- planning ------------------------------------------------------------------------------

    async def replace_shares(
        self, channel: str, skus: Sequence[str], shares: Sequence[tuple[str, Contribution]]
    ) -> dict[str, list[Contribution]]:
        return await self._run(self._replace_shares, channel, skus, shares)

    def _replace_shares(
        self, channel: str, skus: Sequence[str], shares: Sequence[tuple[str, Contribution]]
    ) -> dict[str, list[Contribution]]:
        affected: set[str] = {share.key for _, share in shares}
        with self._tx():
            rows = self._select_in(
                "SELECT key FROM shares WHERE channel = ? AND sku IN ({in})", skus, channel
            )
            affected.update(key for (key,) in rows)
            for chunk in _chunks(skus):
                self._db.execute(
                    _in_clause("DELETE FROM shares WHERE channel = ? AND sku IN ({in})", chunk),
                    (channel, *chunk),
                )
            self._db.executemany(
                "INSERT OR REPLACE INTO shares (channel, sku, key, quantity, price) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        channel,
                        sku,
                        s.key,
                        plain(s.quantity),
                        None if s.price is None else plain(s.price),
                    )
                    for sku, s in shares
                ],
            )
            result: dict[str, list[Contribution]] = {key: [] for key in affected}
            rows = self._select_in(
                "SELECT key, quantity, price FROM shares WHERE channel = ? AND key IN ({in})",
                sorted(affected),
                channel,
            )
            for key, quantity, price in rows:
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
        return await self._run(self._set_desired, channel, values, now, timing, guard)

    def _set_desired(
        self,
        channel: str,
        values: dict[str, Value],
        now: float,
        timing: Timing,
        guard: ScanGuard | None,
    ) -> int:
        writes: list[Item] = []
        waiting = 0
        with self._tx():
            current = self._load(channel, list(values))
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
            self._write(writes)
        return waiting

    # --- the work queue ------------------------------------------------------------------------

    async def claim(self, channel: str, now: float, limit: int) -> list[ItemValue]:
        return await self._run(self._claim, channel, now, limit)

    def _claim(self, channel: str, now: float, limit: int) -> list[ItemValue]:
        with self._tx():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE channel = ? AND status = 'pending' "
                "AND due_at <= ? ORDER BY priority, due_at LIMIT ?",
                (channel, now, limit),
            ).fetchall()
            items = [lifecycle.claim(self._loaded(row)) for row in rows]
            self._write(items)
        return [ItemValue(item.key, Value.decode(item.desired)) for item in items]

    async def count_due(self, channel: str, now: float, limit: int) -> int:
        return await self._run(self._count_due, channel, now, limit)

    def _count_due(self, channel: str, now: float, limit: int) -> int:
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM items WHERE channel = ? AND status = 'pending' "
            "AND due_at <= ? LIMIT ?)",
            (channel, now, limit),
        ).fetchone()
        return int(count)

    async def next_due(self, channel: str) -> float | None:
        return await self._run(self._next_due, channel)

    def _next_due(self, channel: str) -> float | None:
        due = [
            row[0]
            for priority in (lifecycle.FRESH, lifecycle.BACKLOG)
            for row in self._db.execute(
                "SELECT MIN(due_at) FROM items WHERE channel = ? AND status = 'pending' "
                "AND priority = ?",
                (channel, priority),
            )
            if row[0] is not None
        ]
        return min(due) if due else None

    async def settle(
        self,
        channel: str,
        verdicts: Sequence[Verdict],
        now: float,
        timing: Timing,
        backoff: Callable[[int], float],
    ) -> Settled:
        return await self._run(self._settle, channel, verdicts, now, timing, backoff)

    def _settle(
        self,
        channel: str,
        verdicts: Sequence[Verdict],
        now: float,
        timing: Timing,
        backoff: Callable[[int], float],
    ) -> Settled:
        with self._tx():
            current = self._load(channel, [v.key for v in verdicts])
            done = lifecycle.settle_all(
                channel, current, verdicts, now, timing=timing, backoff=backoff
            )
            writes, history = done.writes, done.history
            self._write(writes)
            self._db.executemany(
                "INSERT INTO history (channel, key, before, after, outcome, error, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                history,
            )
            # A bounded trail per item, whatever the retention: an item retried every few
            # seconds for a day must not grow the file by thousands of rows.
            self._db.executemany(
                "DELETE FROM history WHERE channel = ? AND key = ? AND at < ("
                "SELECT at FROM history WHERE channel = ? AND key = ? "
                "ORDER BY at DESC LIMIT 1 OFFSET ?)",
                [(channel, v.key, channel, v.key, self.history_per_item - 1) for v in verdicts],
            )
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
        await self._run(self._release, channel, keys, now, timing, sent=sent, not_before=not_before)

    def _release(
        self,
        channel: str,
        keys: Sequence[str],
        now: float,
        timing: Timing,
        *,
        sent: bool,
        not_before: float,
    ) -> None:
        with self._tx():
            items = self._load(channel, keys).values()
            self._write(
                [
                    lifecycle.release(item, now, timing, sent=sent, not_before=not_before)
                    for item in items
                ]
            )

    async def recover(self, now: float, grace: Mapping[str, float] | None = None) -> int:
        return await self._run(self._recover, now, dict(grace or {}))

    def _recover(self, now: float, grace: dict[str, float]) -> int:
        with self._tx():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE status = 'sending'"
            ).fetchall()
            items = [self._loaded(row) for row in rows]
            self._write(
                [
                    lifecycle.release(
                        item, now, _NO_TIMING, not_before=now + grace.get(item.channel, 0.0)
                    )
                    for item in items
                ]
            )
        return len(rows)

    async def flush(self, channel: str, now: float) -> None:
        await self._run(self._flush, channel, now)

    def _flush(self, channel: str, now: float) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE items SET due_at = MAX(?, next_attempt) WHERE channel = ? "
                "AND status = 'pending' AND due_at > MAX(?, next_attempt)",
                (now, channel, now),
            )

    async def force_all(self, now: float) -> int:
        top = await self._run(self._max_rowid)
        forced = 0
        for start in range(0, top, _PAGE):
            forced += await self._run(self._force_page, start, start + _PAGE, now)
        return forced

    def _max_rowid(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM items").fetchone()[0])

    def _force_page(self, first: int, last: int, now: float) -> int:
        with self._tx():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE rowid > ? AND rowid <= ?", (first, last)
            ).fetchall()
            self._write([lifecycle.force(self._loaded(row), now) for row in rows])
        return len(rows)

    async def mark_drifted(
        self, channel: str, live: Sequence[tuple[str, Value]], now: float
    ) -> list[str]:
        return await self._run(self._mark_drifted, channel, live, now)

    def _mark_drifted(
        self, channel: str, live: Sequence[tuple[str, Value]], now: float
    ) -> list[str]:
        seen = {key: value.encode() for key, value in live}
        moved: list[Item] = []
        with self._tx():
            for item in self._load(channel, list(seen)).values():
                before = item.acked
                if lifecycle.drifted(item, seen[item.key], now):
                    moved.append(item)
                    self._db.execute(
                        "INSERT INTO history (channel, key, before, after, outcome, error, at) "
                        "VALUES (?, ?, ?, ?, 'drift', ?, ?)",
                        (channel, item.key, before, seen[item.key], "changed on the channel", now),
                    )
            self._write(moved)
        return [item.key for item in moved]

    async def reassert(self, channel: str, now: float) -> int:
        top = await self._run(self._max_rowid)
        moved = 0
        for start in range(0, top, _PAGE):
            moved += await self._run(self._reassert_page, channel, start, start + _PAGE, now)
        return moved

    def _reassert_page(self, channel: str, first: int, last: int, now: float) -> int:
        with self._tx():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE rowid > ? AND rowid <= ? AND channel = ? "
                "AND status = 'ok'",
                (first, last, channel),
            ).fetchall()
            self._write([lifecycle.reassert(self._loaded(row), now) for row in rows])
        return len(rows)

    async def items_page(self, channel: str, after: str, limit: int) -> list[ItemRow]:
        return await self._run(self._items_page, channel, after, limit)

    def _items_page(self, channel: str, after: str, limit: int) -> list[ItemRow]:
        rows = self._db.execute(
            "SELECT channel, key, desired, acked, status, attempts, last_error, diverged_at, "
            "changed_at FROM items WHERE channel = ? AND key > ? ORDER BY key LIMIT ?",
            (channel, after, limit),
        )
        return [
            ItemRow(c, k, Value.decode(d), _value(a), s, n, e, dv, ch)
            for c, k, d, a, s, n, e, dv, ch in rows
        ]

    async def release_held(
        self, channel: str | None, now: float, *, by: str | None = None
    ) -> dict[str, int]:
        released: Counter[str] = Counter()
        while True:
            page = await self._run(self._release_held_page, channel, now, by)
            released.update(page)
            if page.total() < _PAGE:
                return dict(released)

    def _release_held_page(self, channel: str | None, now: float, by: str | None) -> Counter[str]:
        query = f"SELECT {_COLUMNS} FROM items WHERE held_scan IS NOT NULL"
        params: tuple[str | int, ...] = (_PAGE,)
        if channel is not None:
            query += " AND channel = ?"
            params = (channel, _PAGE)
        with self._tx():
            rows = self._db.execute(query + " LIMIT ?", params).fetchall()
            items = [self._loaded(row) for row in rows]
            history = [
                (i.channel, i.key, i.acked, i.desired, "released", by, now)
                for i in items
                if by is not None
            ]
            self._write([lifecycle.release_held(item, now) for item in items])
            self._db.executemany(
                "INSERT INTO history (channel, key, before, after, outcome, error, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                history,
            )
        return Counter(item.channel for item in items)

    # --- reading -------------------------------------------------------------------------------

    async def positive_acked(self) -> dict[str, int]:
        return await self._run(self._positive_acked)

    def _positive_acked(self) -> dict[str, int]:
        rows = self._db.execute("SELECT channel, n FROM in_stock_counts WHERE n > 0")
        return {channel: int(count) for channel, count in rows}

    async def items(self, channel: str | None = None) -> list[ItemRow]:
        return await self._run(self._items, channel)

    def _items(self, channel: str | None) -> list[ItemRow]:
        query = (
            "SELECT channel, key, desired, acked, status, attempts, last_error, diverged_at, "
            "changed_at FROM items"
        )
        params: tuple[str, ...] = ()
        if channel is not None:
            query += " WHERE channel = ?"
            params = (channel,)
        rows = self._db.execute(query + " ORDER BY channel, key", params)
        return [
            ItemRow(c, k, Value.decode(d), _value(a), s, n, e, dv, ch)
            for c, k, d, a, s, n, e, dv, ch in rows
        ]

    async def skus(self, channel: str, keys: Sequence[str]) -> dict[str, list[str]]:
        return await self._run(self._skus, channel, keys)

    def _skus(self, channel: str, keys: Sequence[str]) -> dict[str, list[str]]:
        rows = self._select_in(
            "SELECT key, sku FROM shares WHERE channel = ? AND key IN ({in}) ORDER BY sku",
            keys,
            channel,
        )
        found: dict[str, list[str]] = {}
        for key, sku in rows:
            found.setdefault(key, []).append(sku)
        return found

    async def counts(self) -> dict[str, dict[str, int]]:
        return await self._run(self._counts)

    def _counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for channel, status, count in self._db.execute(
            "SELECT channel, status, n FROM item_counts WHERE n > 0"
        ):
            out.setdefault(channel, {})[status] = count
        return out

    async def oldest_pending(self) -> dict[str, float]:
        return await self._run(self._oldest_pending)

    def _oldest_pending(self) -> dict[str, float]:
        waiting = self._db.execute(
            "SELECT channel, status FROM item_counts WHERE status IN ('pending', 'sending') "
            "AND n > 0"
        ).fetchall()
        oldest: dict[str, float] = {}
        for channel, status in waiting:  # one index seek each: no scan of the items
            (first,) = self._db.execute(
                "SELECT MIN(diverged_at) FROM items WHERE channel = ? AND status = ?",
                (channel, status),
            ).fetchone()
            if first is not None:
                oldest[channel] = min(float(first), oldest.get(channel, float(first)))
        return oldest

    async def history(self, sku: str) -> list[HistoryRow]:
        return await self._run(self._history, sku)

    def _history(self, sku: str) -> list[HistoryRow]:
        rows = self._db.execute(
            "SELECT h.channel, h.key, h.before, h.after, h.outcome, h.error, h.at FROM history h "
            "WHERE EXISTS (SELECT 1 FROM shares s WHERE s.channel = h.channel AND s.key = h.key "
            "AND s.sku = ?) ORDER BY h.at, h.id",
            (sku,),
        )
        return [
            HistoryRow(c, k, _value(b), Value.decode(a), o, e, at) for c, k, b, a, o, e, at in rows
        ]

    async def prune_history(self, before: float) -> int:
        pruned = 0
        while True:  # in pages: a month of history must not hold the store for seconds
            page = await self._run(self._prune_history_page, before)
            pruned += page
            if page < _PAGE:
                return pruned

    def _prune_history_page(self, before: float) -> int:
        with self._tx():
            cursor = self._db.execute(
                "DELETE FROM history WHERE id IN (SELECT id FROM history WHERE at < ? LIMIT ?)",
                (before, _PAGE),
            )
        return cursor.rowcount

    async def get_meta(self, name: str) -> str | None:
        return await self._run(self._get_meta, name)

    def _get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, name: str, value: str) -> None:
        await self._run(self._set_meta, name, value)

    def _set_meta(self, name: str, value: str) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # --- the look-up queue (webhooks) ----------------------------------------------------------

    async def enqueue_lookups(self, skus: Sequence[str], cap: int, now: float) -> Enqueued:
        return await self._run(self._enqueue_lookups, list(dict.fromkeys(skus)), cap, now)

    def _enqueue_lookups(self, skus: list[str], cap: int, now: float) -> Enqueued:
        added = overflow = 0
        with self._tx():
            (queued,) = self._db.execute("SELECT COUNT(*) FROM lookup_queue").fetchone()
            for sku in skus:
                again = self._db.execute(
                    "UPDATE lookup_queue SET seq = seq + 1, claimed_by = NULL, claimed_at = NULL "
                    "WHERE sku = ?",
                    (sku,),
                )
                if again.rowcount:
                    continue
                if queued >= cap:
                    overflow += 1
                    continue
                self._db.execute(
                    "INSERT INTO lookup_queue (sku, queued_at) VALUES (?, ?)", (sku, now)
                )
                queued += 1
                added += 1
        return Enqueued(added, overflow)

    async def claim_lookups(
        self, claimer: str, limit: int, now: float, reclaim_after: float = 60.0
    ) -> list[LookupEntry]:
        return await self._run(self._claim_lookups, claimer, limit, now, reclaim_after)

    def _claim_lookups(
        self, claimer: str, limit: int, now: float, reclaim_after: float
    ) -> list[LookupEntry]:
        with self._tx():
            rows = self._db.execute(
                "SELECT pos, sku, seq, queued_at FROM lookup_queue WHERE claimed_by IS NULL "
                "OR claimed_by <> ? OR claimed_at < ? ORDER BY pos LIMIT ?",
                (claimer, now - reclaim_after, limit),
            ).fetchall()
            self._db.executemany(
                "UPDATE lookup_queue SET claimed_by = ?, claimed_at = ? WHERE pos = ?",
                [(claimer, now, pos) for pos, _, _, _ in rows],
            )
        return [LookupEntry(sku, seq, queued_at) for _, sku, seq, queued_at in rows]

    async def lookups_done(self, entries: Sequence[LookupEntry]) -> int:
        return await self._run(self._lookups_done, entries)

    def _lookups_done(self, entries: Sequence[LookupEntry]) -> int:
        with self._tx():
            cursor = self._db.executemany(
                "DELETE FROM lookup_queue WHERE sku = ? AND seq = ?",
                [(e.sku, e.seq) for e in entries],
            )
        return cursor.rowcount

    async def unclaim_lookups(self, entries: Sequence[LookupEntry]) -> None:
        await self._run(self._unclaim_lookups, entries)

    def _unclaim_lookups(self, entries: Sequence[LookupEntry]) -> None:
        with self._tx():
            self._db.executemany(
                "UPDATE lookup_queue SET claimed_by = NULL, claimed_at = NULL "
                "WHERE sku = ? AND seq = ?",
                [(e.sku, e.seq) for e in entries],
            )

    async def lookup_depth(self) -> tuple[int, float | None]:
        return await self._run(self._lookup_depth)

    def _lookup_depth(self) -> tuple[int, float | None]:
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(queued_at) FROM lookup_queue"
        ).fetchone()
        return int(count), None if oldest is None else float(oldest)

    async def close(self) -> None:
        if self._limiter is None:
            self._db.close()
        else:
            with contextlib.suppress(StoreUnavailable):
                await self._run(self._db.close)
