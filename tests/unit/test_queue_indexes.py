"""SQLite's queue indexes hold only the rows their reads look for, and the reads still probe them.

`items_due` holds the pending items and `items_lag` the diverged ones (schema step 7): an
acknowledged item leaves both, so a claim and an acknowledgement each write fewer index entries.
A partial index serves only a query whose WHERE names its predicate: these plans would turn into
scans of every item if a read lost it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from daemon.store import lifecycle
from daemon.store.sqlite import queue, reading
from daemon.store.sqlite.schema import migrate


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    migrate(connection)
    yield connection
    connection.close()


def _plan(db: sqlite3.Connection, query: str, params: object) -> list[str]:
    return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + query, params)]


def test_the_queue_indexes_are_partial(db: sqlite3.Connection) -> None:
    partial = {row[1]: bool(row[4]) for row in db.execute("PRAGMA index_list(items)")}
    assert partial["items_due"] and partial["items_lag"], partial


def _entries(db: sqlite3.Connection, index: str) -> int:
    """The entries an index holds, as SQLite stores them (the `dbstat` table of its pages)."""
    (count,) = db.execute(
        "SELECT COALESCE(SUM(ncell), 0) FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (index,)
    ).fetchone()
    return int(count)


def test_an_acknowledged_item_leaves_both_indexes(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO items (channel, key, desired, changed_at, status, diverged_at, due_at)"
        " VALUES ('c', 'waits', '{}', 1, 'pending', 1, 1), ('c', 'done', '{}', 1, 'ok', NULL, NULL)"
    )
    assert (_entries(db, "items_due"), _entries(db, "items_lag")) == (1, 1)


@pytest.mark.parametrize(
    ("query", "params", "index"),
    [
        (queue._DUE, {"channel": "c", "now": 1.0, "limit": 100}, "items_due"),
        (queue._COUNT_DUE, ("c", 1.0, 100), "items_due"),
        (queue._NEXT_DUE, ("c", lifecycle.FRESH), "items_due"),
        (queue._FLUSH, (1.0, "c", 1.0), "items_due"),
        (reading._OLDEST_DIVERGED, ("c", "pending"), "items_lag"),
    ],
    ids=["claim", "count_due", "next_due", "flush", "oldest_diverged"],
)
def test_each_queue_read_probes_its_partial_index(
    db: sqlite3.Connection, query: str, params: object, index: str
) -> None:
    plan = _plan(db, query, params)
    assert any(f"USING INDEX {index}" in step or f"USING COVERING INDEX {index}" in step
               for step in plan), plan  # fmt: skip
    assert not [step for step in plan if step.startswith("SCAN items")], plan
