"""The SQLite store's look-up queue: SKUs a webhook named, waiting for a keyCRM look-up.

Claimed by a consumer, done or unclaimed when its look-up ends; a SKU named again while queued
moves its sequence on, so a look-up that began before the new webhook does not take it off.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.store.protocol import Enqueued, LookupEntry
from daemon.store.sqlite.base import SQLiteBase, in_thread

__all__ = ["SQLiteLookups"]


class SQLiteLookups(SQLiteBase):
    """The look-up queue of webhooks (see the module docstring)."""

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

    @in_thread
    def claim_lookups(
        self, claimer: str, limit: int, now: float, reclaim_after: float = 60.0
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

    @in_thread
    def lookups_done(self, entries: Sequence[LookupEntry]) -> int:
        with self._tx():
            cursor = self._db.executemany(
                "DELETE FROM lookup_queue WHERE sku = ? AND seq = ?",
                [(e.sku, e.seq) for e in entries],
            )
        return cursor.rowcount

    @in_thread
    def unclaim_lookups(self, entries: Sequence[LookupEntry]) -> None:
        with self._tx():
            self._db.executemany(
                "UPDATE lookup_queue SET claimed_by = NULL, claimed_at = NULL "
                "WHERE sku = ? AND seq = ?",
                [(e.sku, e.seq) for e in entries],
            )

    @in_thread
    def lookup_depth(self) -> tuple[int, float | None]:
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(queued_at) FROM lookup_queue"
        ).fetchone()
        return int(count), None if oldest is None else float(oldest)
