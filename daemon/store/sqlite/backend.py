"""The embedded backend: SQLite in WAL mode, one file, worked from one thread of its own.

`SQLiteStore` is its calls put together, one module per concern over one connection and one
thread runner (`base.SQLiteBase`): records.py (keyCRM records and the planning shares),
queue.py (channel items and their work queue), reading.py (reads, pruning, meta) and lookups.py
(the webhooks' look-up queue). What the backends share beyond SQL is in `daemon.store.rows`.
"""

from __future__ import annotations

from daemon.store.protocol import LookupStore, Store
from daemon.store.sqlite.base import HISTORY_PER_ITEM
from daemon.store.sqlite.lookups import SQLiteLookups
from daemon.store.sqlite.queue import SQLiteQueue
from daemon.store.sqlite.reading import SQLiteReading
from daemon.store.sqlite.records import SQLiteRecords

__all__ = ["HISTORY_PER_ITEM", "SQLiteStore"]


class SQLiteStore(SQLiteRecords, SQLiteQueue, SQLiteReading, SQLiteLookups):
    """SQLite in WAL mode, one file; `daemon.store.sqlite.base` says how it keeps off the loop."""


def _keeps_the_protocol(store: SQLiteStore) -> tuple[Store, LookupStore]:
    """Never called: mypy checks here that `SQLiteStore` is a `Store` (and keeps the look-up
    queue) as the protocol grows."""
    return store, store
