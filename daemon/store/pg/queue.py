"""The PostgreSQL store's channel items and their work queue, each call one transaction under its
channel's lock, or the all-items lock for a call that moves items of every channel.

The moves every pushed item makes (claim, an acknowledgement of the value sent, a resync's force,
a reassert) are set-based statements (`daemon.store.moves`, the SQL SQLite runs too); every other
move loads its items (locking their rows), moves them through `daemon.store.lifecycle` (by way of
`daemon.store.rows`) and saves them back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import LiteralString

import orjson

from daemon.core.models import ItemValue, Outcome, Value, Verdict
from daemon.rules.guard import ScanGuard
from daemon.store import lifecycle
from daemon.store import rows as shared
from daemon.store.lifecycle import Timing
from daemon.store.moves import ACKNOWLEDGE, CLAIM, FORCE, REASSERT, bind, pg
from daemon.store.pg.base import ALL_ITEMS, COLUMNS, PAGE, TRIM_HISTORY, Conn, PostgresBase
from daemon.store.pg.merchants import SCOPE
from daemon.store.protocol import ItemRow, Settled
from daemon.store.rows import item as _item

__all__ = ["PostgresQueue"]

#: The due rows, first due first, locked (others' claims skip them) and moved in one statement,
#: by their addresses: a join by key read the whole channel before the table had statistics
#: (tests/postgres/test_batches.py). They come back with their order (RETURNING keeps none).
_CLAIM: LiteralString = (
    "WITH due AS (SELECT ctid AS row_id, key AS due_key, priority AS due_priority,"
    " due_at AS due_time FROM items WHERE channel = %(channel)s AND " + pg(CLAIM.where) + ""
    " ORDER BY priority, due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
    " moved AS (UPDATE items SET " + pg(CLAIM.sets) + ""
    " WHERE ctid = ANY(ARRAY(SELECT row_id FROM due)) RETURNING key, desired)"
    " SELECT moved.key, moved.desired FROM moved JOIN due ON due.due_key = moved.key"
    " ORDER BY due.due_priority, due.due_time"
)
#: The earliest due time of the channel's pending items: the first item of each priority in due
#: order, skipping from one priority to the next through the index (a loose index scan): a few
#: probes, where a MIN per priority read every pending item, all of them during a resync, before
#: each claim. An expression (`%(c)s`: the channel).
_NEXT_DUE: LiteralString = (
    "(WITH RECURSIVE firsts AS ("
    " (SELECT priority, due_at FROM items WHERE channel = %(c)s"
    "  AND status = 'pending' ORDER BY priority, due_at LIMIT 1)"
    " UNION ALL"
    " SELECT nxt.priority, nxt.due_at FROM firsts CROSS JOIN LATERAL ("
    "  SELECT priority, due_at FROM items WHERE channel = %(c)s"
    "  AND status = 'pending' AND priority > firsts.priority"
    "  ORDER BY priority, due_at LIMIT 1) AS nxt"
    ") SELECT MIN(due_at) FROM firsts)"
)
#: How many of the channel's items are due at `%(now)s`, counted up to `%(limit)s`.
_COUNT_DUE: LiteralString = (
    "SELECT COUNT(*) FROM (SELECT 1 FROM items WHERE channel = %(c)s"
    " AND status = 'pending' AND due_at <= %(now)s LIMIT %(limit)s) due"
)
#: Both, for the hints a claim leaves (`claim`).
_LEFT_DUE: LiteralString = "SELECT " + _NEXT_DUE + ", (" + _COUNT_DUE + ")"
#: A push's acknowledged values in one statement: each key probed by its primary key and locked
#: (see `LOAD`), the value acknowledged before kept for the history, and the rows `ACKNOWLEDGE`
#: takes moved by their addresses (`acked = sent`: its condition made them the value sent).
_ACKNOWLEDGE: LiteralString = (
    "WITH found AS (SELECT old.row_id, old.key AS found_key, old.acked AS before"
    " FROM unnest(%(keys)s::text[], %(sents)s::text[]) AS v(verdict_key, verdict_sent)"
    " CROSS JOIN LATERAL (SELECT ctid AS row_id, * FROM items WHERE channel = %(channel)s"
    " AND key = v.verdict_key LIMIT 1 FOR UPDATE) AS old"
    " WHERE " + pg(bind(ACKNOWLEDGE.where, sent="v.verdict_sent")) + "),"
    " moved AS (UPDATE items SET " + pg(bind(ACKNOWLEDGE.sets, sent="sent")) + ""
    " WHERE ctid = ANY(ARRAY(SELECT row_id FROM found)) RETURNING key, changed_at)"
    " SELECT moved.key, found.before, moved.changed_at FROM moved"
    " JOIN found ON found.found_key = moved.key"
)
#: `_ACKNOWLEDGE` of a push whose verdicts are all acknowledgements, with their history rows,
#: all or nothing: it moves the rows only if every one of them is still `sending` the value
#: acknowledged (else it writes nothing, and `settle` goes the general way). One statement
#: that needs no answer before the commit: a settle in one round trip. The verdicts come as one
#: JSON array of [key, sent, error] (orjson writes it in C; psycopg writes a text array item by
#: item in Python, a tenth of the daemon's CPU per item). Each key's history is trimmed to the
#: newest `%(keep)s` rows in the same statement (its new row makes the bound: see `_trim`).
_ACKNOWLEDGE_ALL: LiteralString = (
    "WITH v AS (SELECT e->>0 AS verdict_key, e->>1 AS verdict_sent, e->>2 AS verdict_error, n"
    " FROM json_array_elements(%(verdicts)s::json) WITH ORDINALITY AS j(e, n)),"
    " found AS (SELECT old.row_id, old.key AS found_key, old.acked AS before,"
    " v.verdict_sent, v.verdict_error, v.n FROM v"
    " CROSS JOIN LATERAL (SELECT ctid AS row_id, * FROM items WHERE channel = %(channel)s"
    " AND key = v.verdict_key LIMIT 1 FOR UPDATE) AS old"
    " WHERE " + pg(bind(ACKNOWLEDGE.where, sent="v.verdict_sent")) + "),"
    " moved AS (UPDATE items SET " + pg(bind(ACKNOWLEDGE.sets, sent="sent")) + ""
    " WHERE ctid = ANY(ARRAY(SELECT row_id FROM found))"
    " AND (SELECT COUNT(*) FROM found) = %(count)s RETURNING key, changed_at),"
    " logged AS (INSERT INTO history (channel, key, before, after, outcome, error, at)"
    " SELECT %(channel)s, found.found_key, found.before, found.verdict_sent, %(outcome)s,"
    " found.verdict_error, %(now)s::float8 FROM moved JOIN found ON found.found_key = moved.key"
    " ORDER BY found.n),"
    " trimmed AS (DELETE FROM history WHERE id = ANY(ARRAY("
    " SELECT old.id FROM v"
    " CROSS JOIN LATERAL (SELECT at FROM history WHERE channel = %(channel)s"
    "  AND key = v.verdict_key ORDER BY at DESC LIMIT 1 OFFSET %(keep)s) AS oldest_kept"
    " CROSS JOIN LATERAL (SELECT id FROM history WHERE channel = %(channel)s"
    "  AND key = v.verdict_key AND at < oldest_kept.at OFFSET 0) AS old)))"
    " SELECT moved.key, moved.changed_at FROM moved"
)


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
        # batches in flight overlap instead of queueing behind each other. One round trip:
        # the rows are read after the commit (see `_write`), and with them what is left due,
        # which the dispatcher asks next (`next_due`, `count_due`): answered from here while
        # nothing else of this store wrote to the items since, not by two more round trips.
        params = {"c": channel, "channel": channel, "now": now, "limit": limit}
        moves, left = self._moves, []

        async def what_is_left(conn: Conn) -> None:
            # After the claim's commit, in a read of its own: the rows the claim locked are
            # free again meanwhile (the item counts' rows above all), not held for this read.
            await conn.execute("SELECT " + SCOPE, (self._path,))
            left.append(
                await conn.execute("SELECT " + _NEXT_DUE + ", (" + _COUNT_DUE + ")", params)
            )
            await conn.execute("COMMIT")

        async with self._write(claim=True, then=what_is_left) as conn:
            cursor = await conn.execute(_CLAIM, params)
        rows = await cursor.fetchall()
        after = await left[0].fetchone()
        if moves == self._moves and after is not None and after[0] is not None and after[0] <= now:
            self._hints[(channel, "next")] = (now, float(after[0]))
            self._hints[(channel, "count")] = (now, float(after[1]))
        return [ItemValue(key, Value.decode(desired)) for key, desired in rows]

    async def count_due(self, channel: str, now: float, limit: int) -> int:
        hint = self._hints.pop((channel, "count"), None)
        if hint is not None and now >= hint[0] and hint[1] >= limit:
            return limit  # as many were due when the last claim committed (see `claim`)
        rows = await self._select(_COUNT_DUE, {"c": channel, "now": now, "limit": limit})
        return int(rows[0][0]) if rows else 0

    async def next_due(self, channel: str) -> float | None:
        hint = self._hints.pop((channel, "next"), None)
        if hint is not None:
            return hint[1]  # due already when the last claim committed (see `claim`)
        rows = await self._select("SELECT " + _NEXT_DUE, {"c": channel})
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def settle(
        self,
        channel: str,
        verdicts: Sequence[Verdict],
        now: float,
        timing: Timing,
        backoff: Callable[[int], float],
    ) -> Settled:
        acks = shared.quick_acks(verdicts)
        if acks and len(acks) == len(verdicts):
            settled = await self._settle_acknowledged(channel, verdicts, now)
            if settled is not None:
                return settled
        async with self._write(channel=channel) as conn:
            acknowledged: dict[str, tuple[str | None, float]] = {}
            if acks:
                cursor = await conn.execute(
                    _ACKNOWLEDGE,
                    {"keys": list(acks), "sents": list(acks.values()), "channel": channel,
                     "now": now},
                )  # fmt: skip
                acknowledged = {key: (was, at) for key, was, at in await cursor.fetchall()}
            rest = [v for v in verdicts if v.key not in acknowledged]
            current = await self._load(conn, channel, [v.key for v in rest]) if rest else {}
            done = lifecycle.settle_all(channel, current, rest, now, timing=timing, backoff=backoff)
            await self._save(conn, done.writes)
            befores = {key: before for key, (before, _) in acknowledged.items()}
            history = shared.settled_history(channel, verdicts, befores, done.history, now)
            if history:
                await self._history(conn, history)
                await self._trim(conn, channel, verdicts)
        propagated = [float(at) for _, at in acknowledged.values()]
        return Settled([*propagated, *done.propagated], done.attempts)

    async def _settle_acknowledged(
        self, channel: str, verdicts: Sequence[Verdict], now: float
    ) -> Settled | None:
        """A push acknowledged whole, in one round trip (`_ACKNOWLEDGE_ALL`); None when an item
        had moved meanwhile, and nothing was written but the trim of their history."""
        # The trim runs beside the insert, in one snapshot: it keeps one row fewer than the
        # bound, and the new row makes it (a bound of one row: `_trim` after the insert).
        keep = self.history_per_item - 2
        async with self._write(channel=channel, keeps_due=True) as conn:
            cursor = await conn.execute(
                _ACKNOWLEDGE_ALL,
                {"verdicts": orjson.dumps([(v.key, v.sent.encode(), v.error) for v in verdicts])
                 .decode(), "channel": channel, "now": now, "count": len(verdicts),
                 "outcome": str(Outcome.ACKNOWLEDGED), "keep": max(keep, 0)},
            )  # fmt: skip
            if keep < 0:
                await self._trim(conn, channel, verdicts)
        rows = await cursor.fetchall()
        if len(rows) != len(verdicts):
            return None
        return Settled([float(at) for _, at in rows])

    async def _trim(self, conn: Conn, channel: str, verdicts: Sequence[Verdict]) -> None:
        """A bounded trail per item, whatever the retention (as in SQLite)."""
        await conn.execute(
            TRIM_HISTORY,
            (sorted({v.key for v in verdicts}), channel, self.history_per_item - 1, channel),
        )

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
                # A page is a range of the primary key, its end found in the index.
                cursor = await conn.execute(
                    "SELECT channel, key FROM items WHERE (channel, key) > (%s, %s)"
                    " ORDER BY channel, key OFFSET %s LIMIT 1",
                    (*after, PAGE - 1),
                )
                last = await cursor.fetchone()
                span = {"channel": after[0], "key": after[1], "now": now}
                if last is None:
                    forced += await self._rowcount(
                        conn,
                        "UPDATE items SET " + pg(FORCE.sets) + " WHERE (channel, key) >"
                        " (%(channel)s, %(key)s) AND " + pg(FORCE.where),
                        span,
                    )
                else:
                    forced += await self._rowcount(
                        conn,
                        "UPDATE items SET " + pg(FORCE.sets) + " WHERE (channel, key) >"
                        " (%(channel)s, %(key)s) AND (channel, key) <= (%(last_channel)s,"
                        " %(last_key)s) AND " + pg(FORCE.where),
                        {**span, "last_channel": last[0], "last_key": last[1]},
                    )
            if last is None:
                return forced
            after = (last[0], last[1])

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
                    "SELECT key FROM items WHERE channel = %s AND key > %s ORDER BY key"
                    " OFFSET %s LIMIT 1",
                    (channel, after, PAGE - 1),
                )
                last = await cursor.fetchone()
                span = {"channel": channel, "key": after, "now": now}
                if last is None:
                    moved += await self._rowcount(
                        conn,
                        "UPDATE items SET " + pg(REASSERT.sets) + " WHERE channel = %(channel)s"
                        " AND key > %(key)s AND " + pg(REASSERT.where),
                        span,
                    )
                else:
                    moved += await self._rowcount(
                        conn,
                        "UPDATE items SET " + pg(REASSERT.sets) + " WHERE channel = %(channel)s"
                        " AND key > %(key)s AND key <= %(last)s AND " + pg(REASSERT.where),
                        {**span, "last": last[0]},
                    )
            if last is None:
                return moved
            after = last[0]

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
