"""The lifecycle's moves as SQL (daemon/store/moves.py) leave every row exactly as the lifecycle's
functions leave the same item: run over items in every state, on SQLite's own schema."""

from __future__ import annotations

import copy
import itertools
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from daemon.core.models import Outcome, Value, Verdict
from daemon.store import lifecycle, moves
from daemon.store.lifecycle import Item, Status, Timing
from daemon.store.rows import item as loaded
from daemon.store.sqlite import queue
from daemon.store.sqlite.base import COLUMNS
from daemon.store.sqlite.schema import ITEM_COLUMNS, migrate

A, B = Value(quantity=5).encode(), Value(quantity=0).encode()
NOW = 100.0
T = Timing(debounce=2.0, max_delay=10.0)


def items() -> Iterator[Item]:
    """Items in every state, with every combination of the columns a move reads."""
    for n, (status, forced, held, diverged, (desired, sent, acked), due, priority) in enumerate(
        itertools.product(
            Status,
            (False, True),
            (None, 3),
            (None, 5.0),
            itertools.product((A, B), (None, A, B), (None, A, B)),
            (None, 1.0, 500.0),
            (lifecycle.FRESH, lifecycle.BACKLOG),
        )
    ):
        yield Item(
            "c", f"k{n}", desired, 4.0, status, diverged_at=diverged, acked=acked,
            acked_at=None if acked is None else 2.0, sent=sent, forced=forced,
            priority=priority, attempts=2, next_attempt=7.0, due_at=due, last_error="e",
            held_scan=held,
        )  # fmt: skip


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    migrate(connection)
    yield connection
    connection.close()


def _apply(db: sqlite3.Connection, move: moves.Move, item: Item, **params: Any) -> Item | None:
    """The row `move` leaves of `item`, or None when its condition leaves the row out."""
    db.execute("DELETE FROM items")
    db.execute(
        f"INSERT INTO items ({COLUMNS}) VALUES ({', '.join('?' * len(ITEM_COLUMNS))})",
        (item.channel, item.key, item.desired, item.changed_at, str(item.status),
         item.diverged_at, item.acked, item.acked_at, item.sent, int(item.forced), item.priority,
         item.attempts, item.next_attempt, item.due_at, item.last_error, item.held_scan),
    )  # fmt: skip
    moved = db.execute(
        f"UPDATE items SET {move.sets} WHERE key = :key AND ({move.where})",
        {"key": item.key, "now": NOW, **params},
    ).rowcount
    if not moved:
        return None
    return loaded(db.execute(f"SELECT {COLUMNS} FROM items").fetchone())


def _check(
    db: sqlite3.Connection,
    move: moves.Move,
    function: Callable[[Item], Item | None],
    **params: Any,
) -> int:
    """Every row the move takes ends as `function` leaves its item; every item `function`
    moves is one the move takes. Returns how many it took."""
    taken = 0
    for item in items():
        expected = function(copy.copy(item))
        got = _apply(db, move, item, **params)
        assert (got is None) == (expected is None), (move.function, item)
        if got is not None:
            assert got == expected, (move.function, item)
            taken += 1
    return taken


def test_claim_is_the_lifecycle_claim_of_a_due_pending_item(db: sqlite3.Connection) -> None:
    def claim(item: Item) -> Item | None:
        due = item.status is Status.PENDING and item.due_at is not None and item.due_at <= NOW
        return lifecycle.claim(item) if due else None

    assert _check(db, moves.CLAIM, claim)


def test_acknowledge_is_the_lifecycle_settle_of_an_unchanged_acknowledged_value(
    db: sqlite3.Connection,
) -> None:
    def acknowledge(item: Item) -> Item | None:
        if item.status is not Status.SENDING or item.sent != A:
            return None  # settle_all leaves it alone: not what the move is about
        verdict = Verdict(item.key, Value.decode(A), Outcome.ACKNOWLEDGED)
        lifecycle.settle(item, verdict, NOW, T, lambda _n: 1.0)
        # the items the move leaves to the lifecycle's own path: a newer value, a held zero
        return item if item.status is Status.OK and item.desired == A else None

    assert _check(db, moves.ACKNOWLEDGE, acknowledge, sent=A)


def test_force_is_the_lifecycle_force_of_every_item(db: sqlite3.Connection) -> None:
    assert _check(db, moves.FORCE, lambda item: lifecycle.force(item, NOW))


def test_reassert_is_the_lifecycle_reassert_of_an_ok_item(db: sqlite3.Connection) -> None:
    def reassert(item: Item) -> Item | None:
        return lifecycle.reassert(item, NOW) if item.status is Status.OK else None

    assert _check(db, moves.REASSERT, reassert)


def test_postgresql_takes_the_same_sql_with_its_parameters() -> None:
    assert moves.pg(moves.ACKNOWLEDGE.where) == (
        "status = 'sending' AND sent = %(sent)s AND desired = %(sent)s AND held_scan IS NULL"
    )
    assert "%(now)s" in moves.pg(moves.FORCE.sets) and "::" not in moves.FORCE.sets


def test_sqlite_finds_acknowledged_rows_key_by_key(db: sqlite3.Connection) -> None:
    """An acknowledgement probes each key of the push; joined the other way round, SQLite read
    every item in flight once per value (a third of a resync's CPU)."""
    plan = [
        row[3]
        for row in db.execute(
            "EXPLAIN QUERY PLAN " + queue._ACKNOWLEDGE, {"channel": "c", "acks": "[]", "now": 1}
        )
    ]
    assert "SEARCH items USING INDEX sqlite_autoindex_items_1 (channel=? AND key=?)" in plan, plan
    assert not [step for step in plan if "items_lag" in step or step.startswith("SCAN items")]
