"""What both backends do with the rows they read, between the SQL and the lifecycle.

A backend only moves rows in and out of its database; the loops over loaded items (desire with
the scan's guard, drift, release, recovery), the history rows they leave, and the conversion of
read rows into the protocol's values are here, once, so that SQLite and PostgreSQL cannot drift
apart in what a call means. Pure: no I/O, `now` is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, LiteralString

from daemon.core.models import CatalogEntry, Outcome, StockRecord, Value, Verdict
from daemon.rules.guard import ScanGuard
from daemon.rules.plan import Contribution
from daemon.store import lifecycle
from daemon.store.codec import encode_catalog
from daemon.store.lifecycle import Item, Status, Timing
from daemon.store.protocol import HistoryRow, ItemRow
from daemon.store.records import record_from, zeroed

__all__ = [
    "ITEM_ROW_COLUMNS",
    "NO_TIMING",
    "HistoryValues",
    "Stored",
    "catalog_changes",
    "contributions",
    "counts",
    "desire_all",
    "drift_all",
    "held_history",
    "history_rows",
    "item",
    "item_rows",
    "oldest",
    "quick_acks",
    "recover_all",
    "release_all",
    "settled_history",
    "skus_by_key",
    "stock_change",
    "stocked_records",
    "vanished_records",
]

#: A history row as both backends insert it: (channel, key, before, after, outcome, error, at).
HistoryValues = tuple[str, str, str | None, str, str, str | None, float]

#: The columns of `items` an `ItemRow` is read from, in its order (for `item_rows`).
ITEM_ROW_COLUMNS: LiteralString = (
    "channel, key, desired, acked, status, attempts, last_error, diverged_at, changed_at"
)
#: No waiting: a recovered item goes back to pending at once (besides its grace).
NO_TIMING = Timing(0.0, 0.0)


def item(row: Sequence[Any]) -> Item:
    """An `Item` from a row of `ITEM_COLUMNS` (SQLite keeps `forced` as 0/1, hence the bool)."""
    values = list(row)
    values[4] = Status(values[4])
    values[9] = bool(values[9])
    return Item(*values)


def desire_all(
    channel: str,
    current: Mapping[str, Item],
    values: Mapping[str, Value],
    *,
    now: float,
    timing: Timing,
    guard: ScanGuard | None,
) -> tuple[list[Item], int]:
    """The items `values` move (new, changed or held by the guard), and how many now wait."""
    writes: list[Item] = []
    waiting = 0
    for key, value in values.items():
        text = value.encode()
        found = current.get(key)
        hold = None
        if guard is not None and lifecycle.zeroing(found, text):
            hold = guard.hold(channel)
        changed = lifecycle.desire(
            found, text, channel=channel, key=key, now=now, timing=timing, hold_scan=hold
        )
        if changed is None:
            continue
        writes.append(changed)
        waiting += changed.status is Status.PENDING
    return writes, waiting


def drift_all(
    channel: str, current: Iterable[Item], seen: Mapping[str, str], now: float
) -> tuple[list[Item], list[HistoryValues]]:
    """The items whose live value on the channel differs from the acknowledged one, and a
    'drift' history row for each."""
    moved: list[Item] = []
    history: list[HistoryValues] = []
    for found in current:
        before = found.acked
        if lifecycle.drifted(found, seen[found.key], now):
            moved.append(found)
            history.append(
                (channel, found.key, before, seen[found.key], "drift", "changed on the channel",
                 float(now))
            )  # fmt: skip
    return moved, history


def release_all(
    items: Iterable[Item], now: float, timing: Timing, *, sent: bool, not_before: float
) -> list[Item]:
    """Items taken but not settled (a cancelled push) back to pending."""
    return [
        lifecycle.release(found, now, timing, sent=sent, not_before=not_before) for found in items
    ]


def recover_all(items: Iterable[Item], now: float, grace: Mapping[str, float]) -> list[Item]:
    """Items found `sending` at start back to pending, each after its channel's grace."""
    return [
        lifecycle.release(found, now, NO_TIMING, not_before=now + grace.get(found.channel, 0.0))
        for found in items
    ]


def held_history(items: Iterable[Item], now: float, by: str | None) -> list[HistoryValues]:
    """A 'released' history row per held item an operator (`by`) released; none otherwise."""
    if by is None:
        return []
    return [(i.channel, i.key, i.acked, i.desired, "released", by, float(now)) for i in items]


def quick_acks(verdicts: Sequence[Verdict]) -> dict[str, str]:
    """The acknowledged verdicts `moves.ACKNOWLEDGE` may settle in one statement (key: the
    value sent); none when a key comes twice, as one statement may not move a row twice."""
    if len({v.key for v in verdicts}) != len(verdicts):
        return {}
    return {v.key: v.sent.encode() for v in verdicts if v.outcome is Outcome.ACKNOWLEDGED}


def settled_history(
    channel: str,
    verdicts: Sequence[Verdict],
    acknowledged: Mapping[str, str | None],
    rest: Sequence[HistoryValues],
    now: float,
) -> list[HistoryValues]:
    """A push's history rows in its verdicts' order: those `acknowledged` in one statement
    (key: the value acknowledged before), and `rest`, the lifecycle's rows of the others."""
    others = iter(rest)
    out: list[HistoryValues] = []
    for verdict in verdicts:
        if verdict.key in acknowledged:
            out.append(
                (channel, verdict.key, acknowledged[verdict.key], verdict.sent.encode(),
                 str(verdict.outcome), verdict.error, now)
            )  # fmt: skip
        else:
            out.append(next(others))
    return out


def item_rows(rows: Iterable[Sequence[Any]]) -> list[ItemRow]:
    """`ItemRow`s from rows of `ITEM_ROW_COLUMNS`."""
    return [
        ItemRow(c, k, Value.decode(d), _value(a), s, n, e, dv, ch)
        for c, k, d, a, s, n, e, dv, ch in rows
    ]


def history_rows(rows: Iterable[Sequence[Any]]) -> list[HistoryRow]:
    """`HistoryRow`s from rows of (channel, key, before, after, outcome, error, at)."""
    return [HistoryRow(c, k, _value(b), Value.decode(a), o, e, at) for c, k, b, a, o, e, at in rows]


def stocked_records(rows: Iterable[Sequence[Any]]) -> list[StockRecord]:
    """The records of rows of (sku, stock, catalog) that have stock."""
    return [r for r in (record_from(*row) for row in rows) if r is not None]


def vanished_records(rows: Iterable[Sequence[Any]]) -> list[StockRecord]:
    """Rows of (sku, stock, catalog) of SKUs keyCRM no longer lists, as zeroed records (those
    with no stock already are left out)."""
    gone = []
    for sku, stock, catalog in rows:
        record = record_from(sku, stock, catalog)
        zero = None if record is None else zeroed(record)
        if zero is not None:
            gone.append(zero)
    return gone


#: A SKU's stored (stock, catalog) texts, as a record's row holds them.
Stored = tuple[str | None, str | None]


def stock_change(sku: str, text: str, stored: Stored) -> StockRecord | None:
    """The record a SKU's new stock text makes, if it differs from the stored one."""
    stock, catalog = stored
    if text == stock:
        return None
    record = record_from(sku, text, catalog)
    assert record is not None
    return record


def catalog_changes(
    entries: Iterable[CatalogEntry], stored: Mapping[str, Stored]
) -> tuple[list[StockRecord], dict[str, str]]:
    """The records new catalog entries change (those with stock), and the catalog text to store
    per SKU whose text differs (the last entry given for a SKU wins)."""
    changed: list[StockRecord] = []
    texts: dict[str, str] = {}
    for entry in entries:
        text = encode_catalog(entry)
        stock, catalog = stored.get(entry.sku, (None, None))
        if text == catalog:
            continue
        record = record_from(entry.sku, stock, text)
        if record is not None:
            changed.append(record)
        texts[entry.sku] = text
    return changed, texts


def contributions(
    affected: Iterable[str], rows: Iterable[Sequence[Any]]
) -> dict[str, list[Contribution]]:
    """Each affected key's shares, from rows of (key, quantity, price)."""
    result: dict[str, list[Contribution]] = {key: [] for key in affected}
    for key, quantity, price in rows:
        result[key].append(
            Contribution(key, Decimal(quantity), None if price is None else Decimal(price))
        )
    return result


def skus_by_key(rows: Iterable[Sequence[Any]]) -> dict[str, list[str]]:
    """Rows of (key, sku) as each key's SKUs, in the rows' order."""
    found: dict[str, list[str]] = {}
    for key, sku in rows:
        found.setdefault(key, []).append(sku)
    return found


def counts(rows: Iterable[Sequence[Any]]) -> dict[str, dict[str, int]]:
    """Rows of (channel, status, n) as the counts per channel and status."""
    out: dict[str, dict[str, int]] = {}
    for channel, status, count in rows:
        out.setdefault(channel, {})[status] = int(count)
    return out


def oldest(rows: Iterable[Sequence[Any]]) -> dict[str, float]:
    """Rows of (channel, oldest diverged_at or None) as the oldest per channel."""
    out: dict[str, float] = {}
    for channel, first in rows:
        if first is not None:
            out[channel] = min(float(first), out.get(channel, float(first)))
    return out


def _value(text: str | None) -> Value | None:
    return None if text is None else Value.decode(text)
