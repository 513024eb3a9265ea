"""The SQLite store's channel items and their work queue, each call one transaction.

The moves every pushed item makes (claim, an acknowledgement of the value sent, a resync's force,
a reassert) run as set-based SQL (`daemon.store.moves`, checked against the lifecycle by
tests/unit/test_moves.py); every other move loads its items, moves them through
`daemon.store.lifecycle` (by way of `daemon.store.rows`) and writes them back.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from daemon.core.models import ItemValue, Outcome, Value, Verdict
from daemon.rules.guard import ScanGuard
from daemon.store import lifecycle
from daemon.store import rows as shared
from daemon.store.lifecycle import Timing
from daemon.store.moves import ACKNOWLEDGE, CLAIM, FORCE, FORCE_STAYS, REASSERT, bind
from daemon.store.protocol import ItemRow, Settled
from daemon.store.sqlite.base import COLUMNS, PAGE, SQLiteBase, in_stock, in_thread

#: The due items in the order they go (`CLAIM` then moves them by rowid: SQLite's RETURNING
#: comes in no order, and the batch must be the first due).
_DUE = (
    "SELECT rowid, key, desired FROM items WHERE channel = :channel AND "
    + CLAIM.where
    + " ORDER BY priority, due_at LIMIT :limit"
)
_CLAIM = f"UPDATE items SET {CLAIM.sets} WHERE rowid IN (SELECT value FROM json_each(:rows))"
#: A push's acknowledged values (a JSON object {key: sent}; `json_each` reads each pair as its
#: `key` and `value`, no JSON path per row) settled in one statement. The rows are found key by
#: key (CROSS JOIN keeps the object outside: joined the other way round, SQLite read every item
#: in flight once per value); `acked = sent` as the condition made them equal.
_ACKED_ROWS = (
    "FROM json_each(:acks) AS v CROSS JOIN items ON items.channel = :channel AND items.key = v.key"
    f" WHERE {bind(ACKNOWLEDGE.where, sent='v.value')}"
)
_ACKNOWLEDGE = (
    f"UPDATE items SET {bind(ACKNOWLEDGE.sets, sent='sent')} WHERE rowid IN ("
    f"SELECT items.rowid {_ACKED_ROWS}) RETURNING key, changed_at"
)
#: Their history rows, written just before `_ACKNOWLEDGE` (the same condition in the same
#: transaction picks the same rows): the value acknowledged before comes from the row itself
#: instead of being read into Python and bound back, and RETURNING gives it for the counts.
_ACKNOWLEDGED_HISTORY = (
    "INSERT INTO history (channel, key, before, after, outcome, error, at) "
    f"SELECT :channel, items.key, items.acked, v.value, :outcome, NULL, :now {_ACKED_ROWS}"
    " RETURNING key, before"
)
#: The bounded trail per item (the newest `:keep` rows) for a push's keys, in one statement:
#: each key's cut-off first, then its older rows by the (channel, key, at) index.
_TRIM = (
    "DELETE FROM history WHERE rowid IN (SELECT h.rowid FROM (SELECT k.value AS key, "
    "(SELECT at FROM history WHERE channel = :channel AND key = k.value "
    "ORDER BY at DESC LIMIT 1 OFFSET :keep - 1) AS cut FROM json_each(:keys) AS k) AS c "
    "CROSS JOIN history AS h ON h.channel = :channel AND h.key = c.key AND h.at < c.cut)"
)
_RANGE = "rowid > :first AND rowid <= :last"
#: How many of a channel's items are due, up to a limit; the earliest due time of one priority.
#: Both name `status = 'pending'`, the predicate of the partial index `items_due` (schema step 7).
_COUNT_DUE = (
    "SELECT COUNT(*) FROM (SELECT 1 FROM items WHERE channel = ? AND status = 'pending' "
    "AND due_at <= ? LIMIT ?)"
)
_NEXT_DUE = (
    "SELECT MIN(due_at) FROM items WHERE channel = ? AND status = 'pending' AND priority = ?"
)
#: A channel's debounced items due now (their retry times kept).
_FLUSH = (
    "UPDATE items SET due_at = MAX(?, next_attempt) WHERE channel = ? "
    "AND status = 'pending' AND due_at > MAX(?, next_attempt)"
)

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
            due = self._db.execute(
                _DUE, {"channel": channel, "now": now, "limit": limit}
            ).fetchall()
            if due:
                self._db.execute(_CLAIM, {"rows": json.dumps([row[0] for row in due])})
                moved = len(due)
                self._count(
                    Counter({(channel, "pending"): -moved, (channel, "sending"): moved}), Counter()
                )
        return [ItemValue(key, Value.decode(desired)) for _, key, desired in due]

    @in_thread
    def count_due(self, channel: str, now: float, limit: int) -> int:
        (count,) = self._db.execute(_COUNT_DUE, (channel, now, limit)).fetchone()
        return int(count)

    @in_thread
    def next_due(self, channel: str) -> float | None:
        due = [
            row[0]
            for priority in (lifecycle.FRESH, lifecycle.BACKLOG)
            for row in self._db.execute(_NEXT_DUE, (channel, priority))
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
            acks = shared.quick_acks(verdicts)
            if any(v.error is not None for v in verdicts if v.key in acks):
                acks = {}  # their history rows carry no error: the lifecycle's way keeps it
            acknowledged = self._acknowledge(channel, acks, now) if acks else {}
            rest = [v for v in verdicts if v.key not in acknowledged]
            current = self._load(channel, [v.key for v in rest]) if rest else {}
            done = lifecycle.settle_all(channel, current, rest, now, timing=timing, backoff=backoff)
            self._write(done.writes)
            # The acknowledged ones have their rows already (`_acknowledge`): a push with other
            # outcomes too lists the others' after them, at the same time.
            self._add_history(done.history)
            # A bounded trail per item, whatever the retention: an item retried every few
            # seconds for a day must not grow the file by thousands of rows.
            self._db.execute(
                _TRIM,
                {
                    "channel": channel,
                    "keys": json.dumps([v.key for v in verdicts]),
                    "keep": self.history_per_item,
                },
            )
        propagated = [changed for _, changed in acknowledged.values()]
        return Settled([*propagated, *done.propagated], done.attempts)

    def _acknowledge(
        self, channel: str, acks: dict[str, str], now: float
    ) -> dict[str, tuple[str | None, float]]:
        """`moves.ACKNOWLEDGE` over a push's acknowledged values: per key it moved, the value
        acknowledged before (for the history) and when its desired value changed."""
        params = {"channel": channel, "acks": json.dumps(acks), "now": now}
        outcome = str(Outcome.ACKNOWLEDGED)
        before: dict[str, str | None] = dict(
            self._db.execute(_ACKNOWLEDGED_HISTORY, {**params, "outcome": outcome}).fetchall()
        )
        rows = self._db.execute(_ACKNOWLEDGE, params).fetchall()
        moved = {key: (before[key], changed) for key, changed in rows}
        stocked = sum(in_stock(acks[key]) - in_stock(was) for key, (was, _) in moved.items())
        self._count(
            Counter({(channel, "sending"): -len(moved), (channel, "ok"): len(moved)}),
            Counter({channel: stocked}),
        )
        return moved

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
            self._db.execute(_FLUSH, (now, channel, now))

    async def force_all(self, now: float) -> int:
        top = await self._run(self._max_rowid)
        forced = 0
        for start in range(0, top, PAGE):
            forced += await self._run(self._force_page, start, start + PAGE, now)
        return forced

    def _force_page(self, first: int, last: int, now: float) -> int:
        span = {"first": first, "last": last, "now": now}
        with self._tx():
            by_status: Counter[tuple[str, str]] = Counter()
            for channel, status, n in self._db.execute(
                f"SELECT channel, status, COUNT(*) FROM items WHERE {_RANGE} AND status NOT IN "
                f"{FORCE_STAYS} AND status != 'pending' GROUP BY channel, status",
                span,
            ):
                by_status[(channel, status)] -= n
                by_status[(channel, "pending")] += n
            forced = self._db.execute(
                f"UPDATE items SET {FORCE.sets} WHERE {_RANGE} AND ({FORCE.where})", span
            ).rowcount
            self._count(by_status, Counter())
        return forced

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
            moved = self._db.execute(
                f"UPDATE items SET {REASSERT.sets} WHERE {_RANGE} AND channel = :channel "
                f"AND ({REASSERT.where})",
                {"first": first, "last": last, "now": now, "channel": channel},
            ).rowcount
            self._count(Counter({(channel, "ok"): -moved, (channel, "pending"): moved}), Counter())
        return moved

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
