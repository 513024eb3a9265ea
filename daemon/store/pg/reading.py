"""The PostgreSQL store's reads (counts, items, history for `/status`, the CLI and the metrics;
no locks: MVCC), the history's pruning and the meta values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import LiteralString

from daemon.store import rows as shared
from daemon.store.pg.base import PAGE, PostgresBase
from daemon.store.protocol import HistoryRow, ItemRow

__all__ = ["PostgresReading"]


#: The oldest divergence per channel and status with items waiting: one index seek each.
#: `diverged_at IS NOT NULL` changes nothing MIN returns, and names the predicate of the
#: partial index `items_lag` (merchant step 5).
_OLDEST_PENDING: LiteralString = (
    "SELECT c.channel, (SELECT MIN(i.diverged_at) FROM items i"
    "  WHERE i.channel = c.channel AND i.status = c.status AND i.diverged_at IS NOT NULL)"
    " FROM item_counts c WHERE c.status IN ('pending', 'sending') AND c.n > 0"
)


class PostgresReading(PostgresBase):
    """Reads, pruning and meta (see the module docstring)."""

    async def positive_acked(self) -> dict[str, int]:
        async with self._read() as conn:
            cursor = await conn.execute("SELECT channel, n FROM in_stock_counts WHERE n > 0")
            return {channel: int(count) for channel, count in await cursor.fetchall()}

    async def items(self, channel: str | None = None) -> list[ItemRow]:
        query: LiteralString = "SELECT " + shared.ITEM_ROW_COLUMNS + " FROM items"
        async with self._read() as conn:
            if channel is None:
                cursor = await conn.execute(query + " ORDER BY channel, key")
            else:
                cursor = await conn.execute(
                    query + " WHERE channel = %s ORDER BY channel, key", (channel,)
                )
            rows = await cursor.fetchall()
        return shared.item_rows(rows)

    async def skus(self, channel: str, keys: Sequence[str]) -> dict[str, list[str]]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT key, sku FROM shares WHERE channel = %s AND key = ANY(%s) ORDER BY sku",
                (channel, list(keys)),
            )
            rows = await cursor.fetchall()
        return shared.skus_by_key(rows)

    async def counts(self) -> dict[str, dict[str, int]]:
        async with self._read() as conn:
            cursor = await conn.execute("SELECT channel, status, n FROM item_counts WHERE n > 0")
            rows = await cursor.fetchall()
        return shared.counts(rows)

    async def oldest_pending(self) -> dict[str, float]:
        """One index seek per channel and status that has items waiting: no scan of the items."""
        async with self._read() as conn:
            cursor = await conn.execute(_OLDEST_PENDING)
            rows = await cursor.fetchall()
        return shared.oldest(rows)

    async def history(self, sku: str) -> list[HistoryRow]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT h.channel, h.key, h.before, h.after, h.outcome, h.error, h.at"
                " FROM history h WHERE EXISTS (SELECT 1 FROM shares s WHERE"
                " s.channel = h.channel AND s.key = h.key AND s.sku = %s) ORDER BY h.at, h.id",
                (sku,),
            )
            rows = await cursor.fetchall()
        return shared.history_rows(rows)

    async def prune_history(self, before: float) -> int:
        pruned = 0
        while True:  # in pages: a month of history must not hold a transaction for seconds
            async with self._write() as conn:
                count = await self._rowcount(
                    conn,
                    "DELETE FROM history WHERE id IN"
                    " (SELECT id FROM history WHERE at < %s LIMIT %s)",
                    (before, PAGE),
                )
            pruned += count
            if count < PAGE:
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
