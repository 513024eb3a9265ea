"""The PostgreSQL store's channel items and their work queue: every call here loads items (locking
their rows), moves them through `daemon.store.lifecycle` (by way of `daemon.store.rows`) and saves
them back in one transaction under its channel's lock, or the all-items lock for a call that moves
items of every channel."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from daemon.core.models import ItemValue, Value, Verdict
from daemon.rules.guard import ScanGuard
from daemon.store import lifecycle
from daemon.store import rows as shared
from daemon.store.lifecycle import Timing
from daemon.store.pg.base import ALL_ITEMS, COLUMNS, PAGE, TRIM_HISTORY, PostgresBase
from daemon.store.protocol import ItemRow, Settled
from daemon.store.rows import item as _item

__all__ = ["PostgresQueue"]


class PostgresQueue(PostgresBase):
    """Items: desire, the work queue, settling, and the moves over many items."""

    async def set_desired(
        self,
        channel: str,
        values: dict[str, Value],
        now: float,
        timing: Timing,
        guard: ScanGuard | None = None,
    ) -> int:
        async with self._write(channel=channel) as conn:
            current = await self._load(conn, channel, list(values))
            writes, waiting = shared.desire_all(
                channel, current, values, now=now, timing=timing, guard=guard
            )
            await self._save(conn, writes)
        return waiting

    # --- the work queue ------------------------------------------------------------------------

    async def claim(self, channel: str, now: float, limit: int) -> list[ItemValue]:
        # Without the channel's lock (see `_write`): the claims and settles of a channel's
        # batches in flight overlap instead of queueing behind each other.
        async with self._write(claim=True) as conn:
            cursor = await conn.execute(
                "SELECT " + COLUMNS + " FROM items WHERE channel = %s AND status = 'pending'"
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
                    TRIM_HISTORY,
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
                conn, shared.release_all(items, now, timing, sent=sent, not_before=not_before)
            )

    async def recover(self, now: float, grace: Mapping[str, float] | None = None) -> int:
        wait = dict(grace or {})
        async with self._write(lock=ALL_ITEMS) as conn:
            cursor = await conn.execute(
                "SELECT " + COLUMNS + " FROM items WHERE status = 'sending'"
            )
            rows = await cursor.fetchall()
            items = [_item(row) for row in rows]
            await self._save(conn, shared.recover_all(items, now, wait))
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
            async with self._write(lock=ALL_ITEMS) as conn:
                cursor = await conn.execute(
                    "SELECT " + COLUMNS + " FROM items WHERE (channel, key) > (%s, %s)"
                    " ORDER BY channel, key LIMIT %s",
                    (*after, PAGE),
                )
                rows = await cursor.fetchall()
                await self._save(conn, [lifecycle.force(_item(row), now) for row in rows])
            forced += len(rows)
            if len(rows) < PAGE:
                return forced
            after = (rows[-1][0], rows[-1][1])

    async def mark_drifted(
        self, channel: str, live: Sequence[tuple[str, Value]], now: float
    ) -> list[str]:
        seen = {key: value.encode() for key, value in live}
        async with self._write(channel=channel) as conn:
            current = (await self._load(conn, channel, list(seen))).values()
            moved, history = shared.drift_all(channel, current, seen, now)
            await self._save(conn, moved)
            await self._history(conn, history)
        return [item.key for item in moved]

    async def reassert(self, channel: str, now: float) -> int:
        moved = 0
        after = ""
        while True:
            async with self._write(channel=channel) as conn:
                cursor = await conn.execute(
                    "SELECT " + COLUMNS + " FROM items WHERE channel = %s AND key > %s"
                    " AND status = 'ok' ORDER BY key LIMIT %s",
                    (channel, after, PAGE),
                )
                rows = await cursor.fetchall()
                await self._save(conn, [lifecycle.reassert(_item(row), now) for row in rows])
            moved += len(rows)
            if len(rows) < PAGE:
                return moved
            after = rows[-1][1]

    async def items_page(self, channel: str, after: str, limit: int) -> list[ItemRow]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT " + shared.ITEM_ROW_COLUMNS + " FROM items WHERE channel = %s AND key > %s"
                " ORDER BY key LIMIT %s",
                (channel, after, limit),
            )
            rows = await cursor.fetchall()
        return shared.item_rows(rows)

    async def release_held(
        self, channel: str | None, now: float, *, by: str | None = None
    ) -> dict[str, int]:
        released: Counter[str] = Counter()
        while True:
            async with self._write(lock=ALL_ITEMS) as conn:
                if channel is None:
                    cursor = await conn.execute(
                        "SELECT " + COLUMNS + " FROM items WHERE held_scan IS NOT NULL"
                        " LIMIT %s FOR UPDATE",
                        (PAGE,),
                    )
                else:
                    cursor = await conn.execute(
                        "SELECT " + COLUMNS + " FROM items WHERE held_scan IS NOT NULL"
                        " AND channel = %s LIMIT %s FOR UPDATE",
                        (channel, PAGE),
                    )
                items = [_item(row) for row in await cursor.fetchall()]
                await self._save(conn, [lifecycle.release_held(item, now) for item in items])
                await self._history(conn, shared.held_history(items, now, by))
            released.update(item.channel for item in items)
            if len(items) < PAGE:
                return dict(released)
