"""The SQLite store's reads (counts, items, history for `/status`, the CLI and the metrics),
the history's pruning and the meta values."""

from __future__ import annotations

from collections.abc import Sequence

from daemon.store import rows as shared
from daemon.store.protocol import HistoryRow, ItemRow
from daemon.store.sqlite.base import PAGE, SQLiteBase, in_thread

__all__ = ["SQLiteReading"]

#: The oldest divergence of a channel's items in one status: `diverged_at IS NOT NULL` changes
#: nothing MIN returns, and names the predicate of the partial index `items_lag` (schema step 7).
_OLDEST_DIVERGED = (
    "SELECT MIN(diverged_at) FROM items WHERE channel = ? AND status = ? "
    "AND diverged_at IS NOT NULL"
)


class SQLiteReading(SQLiteBase):
    """Reads, pruning and meta (see the module docstring)."""

    @in_thread
    def positive_acked(self) -> dict[str, int]:
        rows = self._db.execute("SELECT channel, n FROM in_stock_counts WHERE n > 0")
        return {channel: int(count) for channel, count in rows}

    @in_thread
    def items(self, channel: str | None = None) -> list[ItemRow]:
        query = f"SELECT {shared.ITEM_ROW_COLUMNS} FROM items"
        params: tuple[str, ...] = ()
        if channel is not None:
            query += " WHERE channel = ?"
            params = (channel,)
        rows = self._db.execute(query + " ORDER BY channel, key", params)
        return shared.item_rows(rows)

    @in_thread
    def skus(self, channel: str, keys: Sequence[str]) -> dict[str, list[str]]:
        rows = self._select_in(
            "SELECT key, sku FROM shares WHERE channel = ? AND key IN ({in}) ORDER BY sku",
            keys,
            channel,
        )
        return shared.skus_by_key(rows)

    @in_thread
    def counts(self) -> dict[str, dict[str, int]]:
        return shared.counts(
            self._db.execute("SELECT channel, status, n FROM item_counts WHERE n > 0")
        )

    @in_thread
    def oldest_pending(self) -> dict[str, float]:
        waiting = self._db.execute(
            "SELECT channel, status FROM item_counts WHERE status IN ('pending', 'sending') "
            "AND n > 0"
        ).fetchall()
        firsts = [  # one index seek each: no scan of the items
            (
                channel,
                self._db.execute(_OLDEST_DIVERGED, (channel, status)).fetchone()[0],
            )
            for channel, status in waiting
        ]
        return shared.oldest(firsts)

    @in_thread
    def history(self, sku: str) -> list[HistoryRow]:
        rows = self._db.execute(
            "SELECT h.channel, h.key, h.before, h.after, h.outcome, h.error, h.at FROM history h "
            "WHERE EXISTS (SELECT 1 FROM shares s WHERE s.channel = h.channel AND s.key = h.key "
            "AND s.sku = ?) ORDER BY h.at, h.id",
            (sku,),
        )
        return shared.history_rows(rows)

    async def prune_history(self, before: float) -> int:
        pruned = 0
        while True:  # in pages: a month of history must not hold the store for seconds
            page = await self._run(self._prune_history_page, before)
            pruned += page
            if page < PAGE:
                return pruned

    def _prune_history_page(self, before: float) -> int:
        with self._tx():
            cursor = self._db.execute(
                "DELETE FROM history WHERE id IN (SELECT id FROM history WHERE at < ? LIMIT ?)",
                (before, PAGE),
            )
        return cursor.rowcount

    @in_thread
    def get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    @in_thread
    def set_meta(self, name: str, value: str) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
