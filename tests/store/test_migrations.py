"""A state file written by an older stocksync opens, migrates once, and keeps its work."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daemon.core.errors import StateUnusable
from daemon.core.models import ItemValue, Value
from daemon.store import SQLiteStore

pytestmark = pytest.mark.anyio

#: the items table of the first release (no work-queue columns, no counters)
OLD = """
CREATE TABLE items (
    channel TEXT NOT NULL, key TEXT NOT NULL, desired TEXT NOT NULL, changed_at REAL NOT NULL,
    diverged_at REAL, acked TEXT, acked_at REAL, status TEXT NOT NULL,
    forced INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0, last_error TEXT, PRIMARY KEY (channel, key)
);
CREATE INDEX items_by_status ON items (channel, status);
INSERT INTO items (channel, key, desired, changed_at, diverged_at, acked, status)
VALUES ('c', 'a', '{"q":2}', 10, 10, '{"q":1}', 'pending'),
       ('c', 'b', '{"q":3}', 10, NULL, '{"q":3}', 'ok');
"""


async def test_an_old_state_file_keeps_its_pending_work(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(OLD)
    db.close()
    store = SQLiteStore(path)
    try:
        assert await store.counts() == {"c": {"pending": 1, "ok": 1}}
        assert await store.positive_acked() == {"c": 2}
        assert await store.claim("c", 10, 10) == [ItemValue("a", Value(quantity=2))]
    finally:
        await store.close()
    again = SQLiteStore(path)  # migrating twice changes nothing
    try:
        assert await again.counts() == {"c": {"sending": 1, "ok": 1}}
    finally:
        await again.close()


async def test_a_state_file_from_a_newer_stocksync_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StateUnusable, match="newer stocksync"):
        SQLiteStore(path)


async def test_an_old_state_file_gains_the_rescan_digest_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(OLD)
    db.close()
    await SQLiteStore(path).close()  # opening migrates
    db = sqlite3.connect(path)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(records)")}
        version = db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()
    assert "digest" in columns
    assert version >= 4
