"""The SQLite store's channel items and their work queue: every call here loads items, moves
them through `daemon.store.lifecycle` (by way of `daemon.store.rows`) and writes them back in one
transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from daemon.core.models import ItemValue, Value, Verdict
from daemon.rules.guard import ScanGuard
from daemon.store import lifecycle
from daemon.store import rows as shared
from daemon.store.lifecycle import Timing
from daemon.store.protocol import ItemRow, Settled
from daemon.store.sqlite.base import COLUMNS, PAGE, SQLiteBase, in_thread

__all__ = ["SQLiteQueue"]


class SQLiteQueue(SQLiteBase):
    """Items: desire, the work queue, settling, and the moves over many items."""

    @in_thread
    def set_desired(
        self,
        channel: str,
        values: dict[str, Value],
        now: float,
        timing: Timing,
        guard: ScanGuard | None = None,
    ) -> int:
        with self._tx():
            current = self._load(channel, list(values))
            writes, waiting = shared.desire_all(
                channel, current, values, now=now, timing=timing, guard=guard
            )
            self._write(writes)
        return waiting

    # --- the work queue ------------------------------------------------------------------------

    @in_thread
    def claim(self, channel: str, now: float, limit: int) -> list[ItemValue]:
        with self._tx():
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM items WHERE channel = ? AND status = 'pending' "
                "AND due_at <= ? ORDER BY priority, due_at LIMIT ?",
                (channel, now, limit),
            ).fetchall()
            items = [lifecycle.claim(self._loaded(row)) for row in rows]
            self._write(items)
        return [ItemValue(item.key, Value.decode(item.desired)) for item in items]

    @in_thread
    def count_due(self, channel: str, now: float, limit: int) -> int:
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM items WHERE channel = ? AND status = 'pending' "
            "AND due_at <= ? LIMIT ?)",
            (channel, now, limit),
        ).fetchone()
        return int(count)

    @in_thread
    def next_due(self, channel: str) -> float | None:
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

    @in_thread
    def settle(
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
            self._add_history(history)
            # A bounded trail per item, whatever the retention: an item retried every few
            # seconds for a day must not grow the file by thousands of rows.
            self._db.executemany(
                "DELETE FROM history WHERE channel = ? AND key = ? AND at < ("
                "SELECT at FROM history WHERE channel = ? AND key = ? "
                "ORDER BY at DESC LIMIT 1 OFFSET ?)",
                [(channel, v.key, channel, v.key, self.history_per_item - 1) for v in verdicts],
            )
        return Settled(done.propagated, done.attempts)

    @in_thread
    def release(
        self,
        channel: str,
        keys: Sequence[str],
        now: float,
        timing: Timing,
        *,
        sent: bool = True,
        not_before: float = 0.0,
    ) -> None:
        with self._tx():
            items = self._load(channel, keys).values()
            self._write(shared.release_all(items, now, timing, sent=sent, not_before=not_before))

    async def recover(self, now: float, grace: Mapping[str, float] | None = None) -> int:
        return await self._run(self._recover, now, dict(grace or {}))

    def _recover(self, now: float, grace: dict[str, float]) -> int:
        with self._tx():
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM items WHERE status = 'sending'"
            ).fetchall()
            items = [self._loaded(row) for row in rows]
            self._write(shared.recover_all(items, now, grace))
        return len(rows)

    @in_thread
    def flush(self, channel: str, now: float) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE items SET due_at = MAX(?, next_attempt) WHERE channel = ? "
                "AND status = 'pending' AND due_at > MAX(?, next_attempt)",
                (now, channel, now),
            )

    async def force_all(self, now: float) -> int:
        top = await self._run(self._max_rowid)
        forced = 0
        for start in range(0, top, PAGE):
            forced += await self._run(self._force_page, start, start + PAGE, now)
        return forced

    def _force_page(self, first: int, last: int, now: float) -> int:
        with self._tx():
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM items WHERE rowid > ? AND rowid <= ?", (first, last)
            ).fetchall()
            self._write([lifecycle.force(self._loaded(row), now) for row in rows])
        return len(rows)

    @in_thread
    def mark_drifted(
        self, channel: str, live: Sequence[tuple[str, Value]], now: float
    ) -> list[str]:
        seen = {key: value.encode() for key, value in live}
        with self._tx():
            current = self._load(channel, list(seen)).values()
            moved, history = shared.drift_all(channel, current, seen, now)
            self._add_history(history)
            self._write(moved)
        return [item.key for item in moved]

    async def reassert(self, channel: str, now: float) -> int:
        top = await self._run(self._max_rowid)
        moved = 0
        for start in range(0, top, PAGE):
            moved += await self._run(self._reassert_page, channel, start, start + PAGE, now)
        return moved

    def _reassert_page(self, channel: str, first: int, last: int, now: float) -> int:
        with self._tx():
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM items WHERE rowid > ? AND rowid <= ? AND channel = ? "
                "AND status = 'ok'",
                (first, last, channel),
            ).fetchall()
            self._write([lifecycle.reassert(self._loaded(row), now) for row in rows])
        return len(rows)

    @in_thread
    def items_page(self, channel: str, after: str, limit: int) -> list[ItemRow]:
        rows = self._db.execute(
            f"SELECT {shared.ITEM_ROW_COLUMNS} FROM items WHERE channel = ? AND key > ? "
            "ORDER BY key LIMIT ?",
            (channel, after, limit),
        )
        return shared.item_rows(rows)

    async def release_held(
        self, channel: str | None, now: float, *, by: str | None = None
    ) -> dict[str, int]:
        released: Counter[str] = Counter()
        while True:
            page = await self._run(self._release_held_page, channel, now, by)
            released.update(page)
            if page.total() < PAGE:
                return dict(released)

    def _release_held_page(self, channel: str | None, now: float, by: str | None) -> Counter[str]:
        query = f"SELECT {COLUMNS} FROM items WHERE held_scan IS NOT NULL"
        params: tuple[str | int, ...] = (PAGE,)
        if channel is not None:
            query += " AND channel = ?"
            params = (channel, PAGE)
        with self._tx():
            rows = self._db.execute(query + " LIMIT ?", params).fetchall()
            items = [self._loaded(row) for row in rows]
            self._write([lifecycle.release_held(item, now) for item in items])
            self._add_history(shared.held_history(items, now, by))
        return Counter(item.channel for item in items)
