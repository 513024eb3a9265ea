"""The state store: keyCRM records, each channel item's lifecycle and work queue, the history.

    protocol.py   the `Store` interface and the values it returns
    lifecycle.py  the item states and every transition between them (pure)
    moves.py      the transitions every pushed item makes, as set-based SQL (tested against
                  lifecycle.py)
    rows.py       what both backends do between their SQL and the lifecycle (pure)
    health.py     a failing store as a state the daemon shows, not a crash
    records.py    keyCRM records as both backends store them    codec.py  their compact text
    pages.py      what a scan records of each page, so a rescan skips the unchanged ones
    sqlite/       the embedded backend (schema.py; backend.py over a module per concern)
    pg/           PostgreSQL, for several replicas (its schema: pg/migrate.py), and the SQL
                  replicas coordinate through (lease, shared queue and budget)
    migrate_state.py  `stocksync migrate-state`: a SQLite state copied into a merchant's
                      PostgreSQL schema; export_state.py  the way back, into a new file

`open_store` opens a SQLite `daemon.state` (one merchant's file; a process holding many
merchants says how many, so their page caches stay small together); `pg/stores.py` gives every
merchant of a process its PostgreSQL store over one pool.
"""

from __future__ import annotations

from pathlib import Path

from daemon.store.export_state import export_state
from daemon.store.health import StoreHealth
from daemon.store.lifecycle import Status, Timing
from daemon.store.migrate_state import TargetNotEmpty, copy_state
from daemon.store.pages import PageMark, ScanPage
from daemon.store.pg.backend import PostgresStore
from daemon.store.pg.stores import PostgresStores
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
from daemon.store.sqlite.base import cache_for

__all__ = [
    "Enqueued",
    "HistoryRow",
    "ItemRow",
    "LookupEntry",
    "LookupStore",
    "PageMark",
    "PostgresStore",
    "PostgresStores",
    "SQLiteStore",
    "ScanPage",
    "Settled",
    "Status",
    "Store",
    "StoreHealth",
    "TargetNotEmpty",
    "Timing",
    "cache_for",
    "copy_state",
    "export_state",
    "open_store",
]


def open_store(state: Path, *, merchants: int = 1) -> SQLiteStore:
    """The store behind `daemon.state` (a file path: SQLite, which also keeps the look-up
    queue; a `postgresql://` state is opened by `daemon.replicas.replica`). `merchants`: how
    many stores this process opens, for the size of each one's page cache (`cache_for`)."""
    return SQLiteStore(state, cache_kib=cache_for(merchants))
