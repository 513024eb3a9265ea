"""The SQLite store's connection: one file in WAL mode, worked from one thread of its own.

Every call runs in a worker thread, one at a time (a capacity limiter of one), so the event loop
never waits on the disk and calls never interleave inside a transaction. Long jobs (a resync over
every item) are cut into pages, each its own call, so other work gets in between.

A process serving many merchants has one store per merchant, so two limits are process-wide:
at most `RUNNING` calls of all its stores run at once (a resync of 200 merchants at once would
otherwise hold 200 pages of rows in memory together, one in each store's thread), and SQLite's
page caches share a soft heap limit (`SQLITE_HEAP`: each connection's own default cache, 2 MiB,
times 200 merchants is 400 MiB). One merchant's store never reaches either. The store's
calls (records.py, queue.py, reading.py, lookups.py) build on `SQLiteBase`: its thread runner,
its transactions, and the item load/write that keeps the counts per status and in stock.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from functools import partial, wraps
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from daemon.core.errors import StateUnusable, StoreUnavailable
from daemon.core.models import Value
from daemon.store.health import StoreHealth
from daemon.store.lifecycle import Item, Status
from daemon.store.rows import HistoryValues
from daemon.store.rows import item as _item
from daemon.store.sqlite.schema import ITEM_COLUMNS, migrate

__all__ = [
    "CACHE_KIB",
    "COLUMNS",
    "HISTORY_PER_ITEM",
    "PAGE",
    "SQLiteBase",
    "cache_for",
    "chunks",
    "in_clause",
    "in_stock",
    "in_thread",
]

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound="SQLiteBase")

_CHUNK = 500  # values per IN (...) list: well under SQLite's parameter limit
_WAL_LIMIT = 64 * 1024 * 1024  # bytes the WAL file keeps after a checkpoint
#: SQLite's own page cache per connection (its default): one merchant's store
CACHE_KIB = 2000
#: what the page caches of every store of a process may hold together (`cache_for`)
CACHES_KIB = 64 * 1024
HISTORY_PER_ITEM = 100
PAGE = 5000  # rows per call of a long job
#: store calls (of every SQLite store in the process) running at once; see the module docstring
RUNNING = 4
_running = threading.BoundedSemaphore(RUNNING)
#: bytes of heap all SQLite connections of the process keep before their caches recycle pages
SQLITE_HEAP = 64 * 1024 * 1024

COLUMNS = ", ".join(ITEM_COLUMNS)
_UPSERT = (
    f"INSERT INTO items ({COLUMNS}) VALUES ({', '.join('?' * len(ITEM_COLUMNS))}) "
    "ON CONFLICT (channel, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in ITEM_COLUMNS[2:])
)


def cache_for(merchants: int) -> int:
    """KiB of page cache for each of `merchants` stores open in one process: SQLite's default
    for a few, shares of `CACHES_KIB` for many (at least 256 KiB). 200 stores of 5,000 SKUs x 2
    channels at the default held ~280 MiB of cache once read through; the files stay in the
    kernel's page cache, so a small cache costs a copy from it, not a disk read."""
    return max(256, min(CACHE_KIB, CACHES_KIB // max(1, merchants)))


def chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_clause(sql: str, chunk: Sequence[str]) -> str:
    """`sql` with its `{in}` filled by one placeholder per value (values stay bound parameters)."""
    return sql.replace("{in}", ",".join("?" * len(chunk)))


def in_thread(
    job: Callable[Concatenate[S, P], T],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """A store call written as plain code on the connection, run in the store's thread (one at a
    time, see `SQLiteBase._run`): one signature per call, the one the protocol names."""

    @wraps(job)
    async def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(job, self, *args, **kwargs)

    return call


def in_stock(acked: str | None) -> bool:
    """Whether an acknowledged value (encoded) shows the item in stock."""
    return acked is not None and Value.encoded_is_positive(acked)


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


class SQLiteBase:
    """The connection, its thread and its transactions; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        history_per_item: int = HISTORY_PER_ITEM,
        cache_kib: int = CACHE_KIB,
    ) -> None:
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
            # Per connection: many merchants' stores in one process take `cache_for(n)` each.
            self._db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            # Keep the WAL from growing past what one checkpoint leaves behind.
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            self._db.execute(f"PRAGMA soft_heap_limit={SQLITE_HEAP}")  # process-wide
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
            with _running:
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
        for chunk in chunks(values):
            params = tuple(chunk) if channel is None else (channel, *chunk)
            yield from self._db.execute(in_clause(sql, chunk), params)

    def _load(self, channel: str, keys: Sequence[str]) -> dict[str, Item]:
        rows = self._select_in(
            f"SELECT {COLUMNS} FROM items WHERE channel = ? AND key IN ({{in}})", keys, channel
        )
        return {row[1]: self._loaded(row) for row in rows}

    def _loaded(self, row: Sequence[Any]) -> Item:
        """An item read in this transaction; what it was is kept for the counters."""
        item = _item(row)
        self._before[(item.channel, item.key)] = (item.status, in_stock(item.acked))
        return item

    def _write(self, items: Sequence[Item]) -> None:
        """Store items moved by the lifecycle, and keep the counts per status and in stock."""
        self._db.executemany(_UPSERT, [_row(item) for item in items])
        by_status: Counter[tuple[str, str]] = Counter()
        stocked: Counter[str] = Counter()
        for item in items:
            status, positive = self._before.pop((item.channel, item.key), (None, False))
            now_positive = in_stock(item.acked)
            if status is not item.status:
                by_status[(item.channel, str(item.status))] += 1
                if status is not None:
                    by_status[(item.channel, str(status))] -= 1
            if positive != now_positive:
                stocked[item.channel] += 1 if now_positive else -1
        self._count(by_status, stocked)

    def _count(self, by_status: Counter[tuple[str, str]], stocked: Counter[str]) -> None:
        """Add what a transaction moved to the counts per (channel, status) and in stock."""
        self._db.executemany(
            "INSERT INTO item_counts (channel, status, n) VALUES (?, ?, ?) "
            "ON CONFLICT (channel, status) DO UPDATE SET n = n + excluded.n",
            [(c, s, n) for (c, s), n in by_status.items() if n],
        )
        self._db.executemany(
            "INSERT INTO in_stock_counts (channel, n) VALUES (?, ?) "
            "ON CONFLICT (channel) DO UPDATE SET n = n + excluded.n",
            [(c, n) for c, n in stocked.items() if n],
        )

    def _add_history(self, rows: Sequence[HistoryValues]) -> None:
        self._db.executemany(
            "INSERT INTO history (channel, key, before, after, outcome, error, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _max_rowid(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM items").fetchone()[0])

    async def close(self) -> None:
        if self._limiter is None:
            self._db.close()
        else:
            with contextlib.suppress(StoreUnavailable):
                await self._run(self._db.close)
