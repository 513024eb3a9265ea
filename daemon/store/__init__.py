"""The state store: keyCRM records, each channel item's lifecycle and work queue, the history.

    protocol.py   the `Store` interface and the values it returns
    lifecycle.py  the item states and every transition between them (pure)
    rows.py       what both backends do between their SQL and the lifecycle (pure)
    health.py     a failing store as a state the daemon shows, not a crash
    records.py    keyCRM records as both backends store them    codec.py  their compact text
    sqlite/       the embedded backend (schema.py; backend.py over a module per concern)
    pg/           PostgreSQL, for several replicas (its schema: pg/migrate.py), and the SQL
                  replicas coordinate through (lease, shared queue and budget)
    migrate_state.py  `stocksync migrate-state`: a SQLite state copied into PostgreSQL

`open_store` picks the backend from `daemon.state`.
"""

from __future__ import annotations

from pathlib import Path

from daemon.store.health import StoreHealth
from daemon.store.lifecycle import Status, Timing
from daemon.store.migrate_state import TargetNotEmpty, copy_state
from daemon.store.pg.backend import PostgresStore
from daemon.store.protocol import (
    Enqueued,
    HistoryRow,
    ItemRow,
    LookupEntry,
    LookupStore,
    Settled,
    Store,
)
from daemon.store.sqlite.backend import SQLiteStore

__all__ = [
    "Enqueued",
    "HistoryRow",
    "ItemRow",
    "LookupEntry",
    "LookupStore",
    "PostgresStore",
    "SQLiteStore",
    "Settled",
    "Status",
    "Store",
    "StoreHealth",
    "TargetNotEmpty",
    "Timing",
    "copy_state",
    "open_store",
]


def open_store(state: Path) -> SQLiteStore:
    """The store behind `daemon.state` (a file path: SQLite, which also keeps the look-up
    queue; a `postgresql://` state is opened by `daemon.replicas.replica`)."""
    return SQLiteStore(state)
