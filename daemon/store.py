"""The state store: keyCRM records, each channel item's desired and acknowledged value, history.

`Store` is the interface the pipeline uses; `SQLiteStore` is the one backend so far (a PostgreSQL
one, for several replicas, must only implement the same methods). Nothing here is kept in memory:
values are compared as canonical text inside SQLite, so a million SKUs cost disk, not RAM.

An item is *pending* while its desired value differs from its acknowledged one (or a resync forced
it); *ok* once the channel confirmed the desired value; *rejected* when the channel refused the
desired value for good, until that value changes or a resync comes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from daemon.codec import decode_catalog, decode_stock, encode_catalog, encode_stock
from daemon.models import CatalogEntry, Outcome, StockLevel, StockRecord, Value
from daemon.plan import Contribution

__all__ = [
    "HistoryRow",
    "ItemRow",
    "Pending",
    "SQLiteStore",
    "Settled",
    "Store",
    "Verdict",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    sku TEXT PRIMARY KEY,
    stock TEXT,
    catalog TEXT,
    seen_scan INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shares (
    channel TEXT NOT NULL,
    sku TEXT NOT NULL,
    key TEXT NOT NULL,
    quantity TEXT NOT NULL,
    price TEXT,
    PRIMARY KEY (channel, sku, key)
);
CREATE INDEX IF NOT EXISTS shares_by_key ON shares (channel, key);
CREATE TABLE IF NOT EXISTS items (
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    desired TEXT NOT NULL,
    changed_at REAL NOT NULL,
    diverged_at REAL,
    acked TEXT,
    acked_at REAL,
    status TEXT NOT NULL,
    forced INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    held_scan INTEGER,
    PRIMARY KEY (channel, key)
);
CREATE INDEX IF NOT EXISTS items_by_status ON items (channel, status);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    before TEXT,
    after TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_key ON history (channel, key, at);
CREATE INDEX IF NOT EXISTS history_by_time ON history (at);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """An item that needs a push, with what the debouncer needs to schedule it."""

    channel: str
    key: str
    changed_at: float
    diverged_at: float
    next_attempt: float
    fresh: bool = True
    #: the new desired value takes a non-zero acknowledged value to zero (the guard watches these)
    zeroing: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one push for one item, as the dispatcher decided it."""

    key: str
    sent: Value
    outcome: Outcome
    error: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """What `settle` leaves: items still pending, and change-to-ack ages of those acknowledged."""

    still: list[Pending]
    propagated: list[float]
    #: attempts so far, per item that was not acknowledged (for the log's `attempt`)
    attempts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemRow:
    """An item as `/status`, `once` and the tests see it."""

    channel: str
    key: str
    desired: Value
    acked: Value | None
    status: str
    attempts: int
    last_error: str | None
    diverged_at: float | None
    changed_at: float


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One push of one item: the audit trail of `stocksync history`."""

    channel: str
    key: str
    before: Value | None
    after: Value
    outcome: str
    error: str | None
    at: float


class Store(Protocol):
    """What the pipeline needs from persistent state. Every method is one transaction."""

    async def save_stock(self, levels: Sequence[StockLevel], scan: int | None) -> list[StockRecord]:
        """Store stock levels; return the records that changed. `scan` marks them seen by it."""
        ...

    async def save_catalog(self, entries: Sequence[CatalogEntry]) -> list[StockRecord]:
        """Store catalog fields; return the records (with stock) that changed."""
        ...

    async def vanished(self, scan: int) -> list[StockRecord]:
        """Zero the records not seen by `scan` nor the complete scan before it; return them."""
        ...

    async def records(self, after: str = "", limit: int = 500) -> list[StockRecord]:
        """Up to `limit` records with stock, SKUs after `after` in order: page through them all
        (a re-plan) without holding a million in memory."""
        ...

    async def replace_shares(
        self, channel: str, skus: Sequence[str], shares: Sequence[tuple[str, Contribution]]
    ) -> dict[str, list[Contribution]]:
        """Swap what these SKUs give to the channel; return every share of each affected key."""
        ...

    async def set_desired(
        self, channel: str, values: dict[str, Value], now: float
    ) -> list[Pending]:
        """Record new desired values; return the items that now need a push."""
        ...

    async def force_all(self, now: float) -> list[Pending]:
        """A resync: every item is pushed again whatever was acknowledged."""
        ...

    async def pending(self) -> list[Pending]:
        """Every item that needs a push, for the debouncer at start."""
        ...

    async def positive_acked(self) -> dict[str, int]:
        """Per channel, items whose acknowledged value is above zero (the guard's baseline)."""
        ...

    async def hold(self, channel: str, keys: Sequence[str], scan: int) -> None:
        """Hold these zeroes back (the mass-change guard) until a later scan confirms them."""
        ...

    async def release_held(self, before_scan: int) -> list[Pending]:
        """Release zeroes held by scans before `before_scan`: a later scan confirmed them."""
        ...

    async def desired(self, channel: str, keys: Sequence[str]) -> dict[str, Value]:
        """The current desired value of these items."""
        ...

    async def settle(
        self,
        channel: str,
        verdicts: Sequence[Verdict],
        now: float,
        backoff: Callable[[int], float],
    ) -> Settled:
        """Apply push outcomes. A retry waits its `retry_after`, else `backoff(attempt)`."""
        ...

    async def items(self, channel: str | None = None) -> list[ItemRow]: ...

    async def skus(self, channel: str, keys: Sequence[str]) -> dict[str, list[str]]:
        """The SKUs that make up each item (for logs about that item)."""
        ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """Items per channel per status."""
        ...

    async def oldest_pending(self) -> dict[str, float]:
        """Per channel, when its oldest unacknowledged desired value diverged (for the lag)."""
        ...

    async def history(self, sku: str) -> list[HistoryRow]: ...

    async def prune_history(self, before: float) -> int: ...

    async def get_meta(self, name: str) -> str | None: ...

    async def set_meta(self, name: str, value: str) -> None: ...

    async def close(self) -> None: ...


def _value(text: str | None) -> Value | None:
    return None if text is None else Value.decode(text)


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _in_clause(sql: str, chunk: Sequence[str]) -> str:
    """`sql` with its `{in}` filled by one placeholder per value (values stay bound parameters)."""
    return sql.replace("{in}", ",".join("?" * len(chunk)))


class SQLiteStore:
    """SQLite in WAL mode, one file. Calls are short transactions run on the event loop thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
        if "held_scan" not in columns:  # state files from before the guard
            self._db.execute("ALTER TABLE items ADD COLUMN held_scan INTEGER")
        self._clock = time.time

    # --- records -------------------------------------------------------------------------------

    def _select_in(
        self, sql: str, values: Sequence[str], channel: str | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of `sql` whose `IN ({in})` takes `values`, 500 at a time (SQLite's limits)."""
        for chunk in _chunks(values):
            params = tuple(chunk) if channel is None else (channel, *chunk)
            yield from self._db.execute(_in_clause(sql, chunk), params)

    def _existing(self, skus: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        rows = self._select_in("SELECT sku, stock, catalog FROM records WHERE sku IN ({in})", skus)
        return {sku: (stock, catalog) for sku, stock, catalog in rows}

    @staticmethod
    def _record(sku: str, stock: str | None, catalog: str | None) -> StockRecord | None:
        if stock is None:
            return None
        return StockRecord(
            decode_stock(sku, stock), None if catalog is None else decode_catalog(sku, catalog)
        )

    async def save_stock(self, levels: Sequence[StockLevel], scan: int | None) -> list[StockRecord]:
        now = self._clock()
        old = self._existing([level.sku for level in levels])
        changed: list[StockRecord] = []
        rows = []
        for level in levels:
            text = encode_stock(level)
            stock, catalog = old.get(level.sku, (None, None))
            if text != stock:
                record = self._record(level.sku, text, catalog)
                assert record is not None
                changed.append(record)
            rows.append((level.sku, text, scan or 0, now))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO records (sku, stock, seen_scan, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sku) DO UPDATE SET stock = excluded.stock, "
                "seen_scan = MAX(records.seen_scan, excluded.seen_scan), "
                "updated_at = excluded.updated_at",
                rows,
            )
        return changed

    async def save_catalog(self, entries: Sequence[CatalogEntry]) -> list[StockRecord]:
        now = self._clock()
        old = self._existing([entry.sku for entry in entries])
        changed: list[StockRecord] = []
        rows = []
        for entry in entries:
            text = encode_catalog(entry)
            stock, catalog = old.get(entry.sku, (None, None))
            if text == catalog:
                continue
            record = self._record(entry.sku, stock, text)
            if record is not None:
                changed.append(record)
            rows.append((entry.sku, text, now))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO records (sku, catalog, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (sku) DO UPDATE SET catalog = excluded.catalog, "
                "updated_at = excluded.updated_at",
                rows,
            )
        return changed

    async def vanished(self, scan: int) -> list[StockRecord]:
        gone = self._db.execute(
            "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND seen_scan < ?",
            (scan - 1,),
        ).fetchall()
        zeroed = []
        for sku, stock, catalog in gone:
            record = self._record(sku, stock, catalog)
            assert record is not None
            level = record.stock
            if level.quantity == 0 and level.reserve == 0:
                continue
            empty = Decimal(0)
            zero = StockLevel(
                sku=sku,
                offer_id=level.offer_id,
                quantity=empty,
                reserve=empty,
                price=level.price,
                warehouses=None
                if level.warehouses is None
                else tuple(type(w)(w.id, empty, empty) for w in level.warehouses),
            )
            zeroed.append(StockRecord(zero, record.catalog))
        if zeroed:
            await self.save_stock([r.stock for r in zeroed], None)
        return zeroed

    async def records(self, after: str = "", limit: int = 500) -> list[StockRecord]:
        rows = self._db.execute(
            "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND sku > ? "
            "ORDER BY sku LIMIT ?",
            (after, limit),
        )
        return [r for r in (self._record(*row) for row in rows) if r is not None]

    # --- planning ------------------------------------------------------------------------------

    async def replace_shares(
        self, channel: str, skus: Sequence[str], shares: Sequence[tuple[str, Contribution]]
    ) -> dict[str, list[Contribution]]:
        affected: set[str] = {share.key for _, share in shares}
        rows = self._select_in(
            "SELECT key FROM shares WHERE channel = ? AND sku IN ({in})", skus, channel
        )
        affected.update(key for (key,) in rows)
        with self._db:
            self._db.execute("BEGIN")
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
                        str(s.quantity),
                        None if s.price is None else str(s.price),
                    )
                    for sku, s in shares
                ],
            )
        result: dict[str, list[Contribution]] = {key: [] for key in affected}
        keys = sorted(affected)
        rows = self._select_in(
            "SELECT key, quantity, price FROM shares WHERE channel = ? AND key IN ({in})",
            keys,
            channel,
        )
        for key, quantity, price in rows:
            result[key].append(
                Contribution(key, Decimal(quantity), None if price is None else Decimal(price))
            )
        return result

    async def set_desired(
        self, channel: str, values: dict[str, Value], now: float
    ) -> list[Pending]:
        keys = list(values)
        current: dict[str, tuple[str, str | None, float | None, int]] = {}
        rows = self._select_in(
            "SELECT key, desired, acked, diverged_at, forced FROM items "
            "WHERE channel = ? AND key IN ({in})",
            keys,
            channel,
        )
        for key, desired, acked, diverged_at, forced in rows:
            current[key] = (desired, acked, diverged_at, forced)
        pending: list[Pending] = []
        writes: list[tuple[str, str, str, float, float | None, str]] = []
        for key, value in values.items():
            text = value.encode()
            desired, acked, diverged_at, forced = current.get(key, (None, None, None, 0))
            if text == desired:
                continue
            if text == acked and not forced:
                # Back to what the channel already holds: nothing to push.
                writes.append((channel, key, text, now, None, "ok"))
                continue
            first = diverged_at if diverged_at is not None else now
            writes.append((channel, key, text, now, first, "pending"))
            zeroing = (
                acked is not None and Value.decode(acked).is_positive and not value.is_positive
            )
            pending.append(Pending(channel, key, now, first, 0.0, zeroing=zeroing))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO items (channel, key, desired, changed_at, diverged_at, status) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (channel, key) DO UPDATE SET "
                "desired = excluded.desired, changed_at = excluded.changed_at, "
                "diverged_at = excluded.diverged_at, status = excluded.status, "
                "attempts = 0, next_attempt = 0, last_error = NULL, held_scan = NULL",
                writes,
            )
        return pending

    async def force_all(self, now: float) -> list[Pending]:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE items SET forced = 1, status = 'pending', attempts = 0, next_attempt = 0, "
                "held_scan = NULL, diverged_at = COALESCE(diverged_at, ?)",
                (now,),
            )
        return [
            Pending(p.channel, p.key, p.changed_at, p.diverged_at, 0.0, fresh=False)
            for p in await self.pending()
        ]

    async def pending(self) -> list[Pending]:
        rows = self._db.execute(
            "SELECT channel, key, changed_at, COALESCE(diverged_at, changed_at), next_attempt "
            "FROM items WHERE status = 'pending'"
        )
        return [Pending(*row) for row in rows]

    async def positive_acked(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT channel, COUNT(*) FROM items WHERE acked IS NOT NULL AND "
            "(json_extract(acked, '$.q') > 0 OR json_extract(acked, '$.l') = 1) GROUP BY channel"
        )
        return {channel: int(count) for channel, count in rows}

    async def hold(self, channel: str, keys: Sequence[str], scan: int) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE items SET status = 'held', held_scan = ? WHERE channel = ? AND key = ?",
                [(scan, channel, key) for key in keys],
            )

    async def release_held(self, before_scan: int) -> list[Pending]:
        rows = self._db.execute(
            "SELECT channel, key, changed_at, COALESCE(diverged_at, changed_at) FROM items "
            "WHERE status = 'held' AND held_scan < ?",
            (before_scan,),
        ).fetchall()
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE items SET status = 'pending', held_scan = NULL "
                "WHERE status = 'held' AND held_scan < ?",
                (before_scan,),
            )
        return [Pending(c, k, changed, diverged, 0.0) for c, k, changed, diverged in rows]

    async def desired(self, channel: str, keys: Sequence[str]) -> dict[str, Value]:
        rows = self._select_in(
            "SELECT key, desired FROM items WHERE channel = ? AND key IN ({in})", keys, channel
        )
        return {key: Value.decode(desired) for key, desired in rows}

    # --- outcomes ------------------------------------------------------------------------------

    async def settle(
        self,
        channel: str,
        verdicts: Sequence[Verdict],
        now: float,
        backoff: Callable[[int], float],
    ) -> Settled:
        keys = [v.key for v in verdicts]
        state: dict[str, tuple[str, str | None, float, float | None, int]] = {}
        rows = self._select_in(
            "SELECT key, desired, acked, changed_at, diverged_at, attempts FROM items "
            "WHERE channel = ? AND key IN ({in})",
            keys,
            channel,
        )
        for key, desired, acked, changed_at, diverged_at, attempts in rows:
            state[key] = (desired, acked, changed_at, diverged_at, attempts)
        still: list[Pending] = []
        propagated: list[float] = []
        tried: dict[str, int] = {}
        history = []
        with self._db:
            self._db.execute("BEGIN")
            for verdict in verdicts:
                if verdict.key not in state:
                    continue
                desired, acked, changed_at, diverged_at, attempts = state[verdict.key]
                sent = verdict.sent.encode()
                newer = sent != desired
                history.append(
                    (channel, verdict.key, acked, sent, str(verdict.outcome), verdict.error, now)
                )
                if verdict.outcome is Outcome.ACKNOWLEDGED:
                    if newer:
                        # A newer value arrived while this one was in flight: push it next.
                        self._db.execute(
                            "UPDATE items SET acked = ?, acked_at = ?, status = 'pending', "
                            "forced = 0, attempts = 0, next_attempt = 0, last_error = NULL, "
                            "diverged_at = changed_at WHERE channel = ? AND key = ?",
                            (sent, now, channel, verdict.key),
                        )
                        still.append(Pending(channel, verdict.key, changed_at, changed_at, 0.0))
                    else:
                        propagated.append(changed_at)
                        self._db.execute(
                            "UPDATE items SET acked = ?, acked_at = ?, status = 'ok', forced = 0, "
                            "attempts = 0, next_attempt = 0, last_error = NULL, diverged_at = NULL "
                            "WHERE channel = ? AND key = ?",
                            (sent, now, channel, verdict.key),
                        )
                elif verdict.outcome is Outcome.REJECTED and not newer:
                    tried[verdict.key] = attempts + 1
                    self._db.execute(
                        "UPDATE items SET status = 'rejected', last_error = ?, "
                        "attempts = attempts + 1 WHERE channel = ? AND key = ?",
                        (verdict.error, channel, verdict.key),
                    )
                else:
                    # A retry, or a rejection of a value that has since changed: try again.
                    tried[verdict.key] = attempts + 1
                    if newer:
                        retry_at = 0.0
                    elif verdict.retry_after is not None:
                        retry_at = now + verdict.retry_after
                    else:
                        retry_at = now + backoff(attempts + 1)
                    self._db.execute(
                        "UPDATE items SET attempts = attempts + 1, next_attempt = ?, "
                        "last_error = ?, status = 'pending' WHERE channel = ? AND key = ?",
                        (retry_at, verdict.error, channel, verdict.key),
                    )
                    first = diverged_at if diverged_at is not None else changed_at
                    still.append(Pending(channel, verdict.key, changed_at, first, retry_at))
            self._db.executemany(
                "INSERT INTO history (channel, key, before, after, outcome, error, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                history,
            )
        return Settled(still, propagated, tried)

    # --- reading -------------------------------------------------------------------------------

    async def items(self, channel: str | None = None) -> list[ItemRow]:
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
        out: dict[str, dict[str, int]] = {}
        for channel, status, count in self._db.execute(
            "SELECT channel, status, COUNT(*) FROM items GROUP BY channel, status"
        ):
            out.setdefault(channel, {})[status] = count
        return out

    async def oldest_pending(self) -> dict[str, float]:
        rows = self._db.execute(
            "SELECT channel, MIN(COALESCE(diverged_at, changed_at)) FROM items "
            "WHERE status = 'pending' GROUP BY channel"
        )
        return {channel: float(oldest) for channel, oldest in rows}

    async def history(self, sku: str) -> list[HistoryRow]:
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
        with self._db:
            cursor = self._db.execute("DELETE FROM history WHERE at < ?", (before,))
        return cursor.rowcount

    async def get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, name: str, value: str) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    async def close(self) -> None:
        self._db.close()
