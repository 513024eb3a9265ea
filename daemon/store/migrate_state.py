"""`stocksync migrate-state`: copy a SQLite state file into PostgreSQL, whole or not at all.

One merchant at a time: the file (`<state>/<merchant>.db` with a merchants folder) goes into
that merchant's schema (`daemon.store.pg.merchants`; `default` unless `--merchant` says), and
other merchants' state in the same database is neither read nor touched.

The file is first copied through SQLite's backup API (consistent even while a daemon writes it,
WAL included) and the copy brought up to the current schema, so the original is never changed.
Every table then goes over with COPY in one transaction into the merchant's migrated, empty
schema: a failure leaves it empty, and a merchant that already has a state there is refused
rather than mixed with another. Items left `sending` stay so: the first daemon to lead
recovers them, as it would after a crash. History keeps its order; its ids are the database's
own.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any, LiteralString

import anyio
import anyio.to_thread

from daemon.core.errors import StocksyncError
from daemon.store.pg.connect import connect
from daemon.store.pg.merchants import DEFAULT_MERCHANT, prepare, scope
from daemon.store.pg.migrate import migrate
from daemon.store.sqlite.schema import migrate as migrate_sqlite

__all__ = ["TABLES", "TargetNotEmpty", "copy_state"]


class TargetNotEmpty(StocksyncError):
    """The database already holds a state: copying into it would mix two."""


#: table -> its columns, in the order both schemas share
TABLES: dict[LiteralString, LiteralString] = {
    "records": "sku, stock, catalog, seen_scan, updated_at",
    "shares": "channel, sku, key, quantity, price",
    "items": (
        "channel, key, desired, changed_at, status, diverged_at, acked, acked_at, sent, forced, "
        "priority, attempts, next_attempt, due_at, last_error, held_scan"
    ),
    "history": "channel, key, before, after, outcome, error, at",
    "meta": "name, value",
}
_ORDER: dict[str, str] = {"history": " ORDER BY id"}
_FORCED = TABLES["items"].split(", ").index("forced")


def _snapshot(source: Path, target: Path) -> sqlite3.Connection:
    """A migrated copy of the state, open for reading from any thread."""
    if not source.is_file():
        raise FileNotFoundError(f"no state file at {source}")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        src.backup(dst)
        migrate_sqlite(dst)
    finally:
        src.close()
        dst.close()
    return sqlite3.connect(target, check_same_thread=False)


async def copy_state(
    source: Path,
    dsn: str,
    *,
    password: str | None = None,
    batch: int = 5000,
    merchant: str = DEFAULT_MERCHANT,
) -> dict[str, int]:
    """Copy every table of the SQLite state `source` into the merchant's schema of the
    database; rows per table.

    Raises FileNotFoundError, `TargetNotEmpty`, or the database's error (nothing copied then).
    """
    copied: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="stocksync-migrate-") as folder:
        db = await anyio.to_thread.run_sync(_snapshot, source, Path(folder) / "state.db")
        try:
            async with await connect(dsn, password=password) as conn:
                await migrate(conn)
                await prepare(conn, merchant)
                async with conn.transaction():
                    await scope(conn, merchant)
                    for table in TABLES:
                        cursor = await conn.execute("SELECT EXISTS (SELECT 1 FROM " + table + ")")
                        row = await cursor.fetchone()
                        if row is not None and row[0]:
                            raise TargetNotEmpty(
                                f"the database already holds a state of merchant {merchant}"
                                f" (table {table} has rows)"
                            )
                    for table, columns in TABLES.items():
                        query = f"SELECT {columns} FROM {table}{_ORDER.get(table, '')}"
                        rows = await anyio.to_thread.run_sync(db.execute, query)
                        count = 0
                        async with conn.cursor().copy(
                            "COPY " + table + " (" + columns + ") FROM STDIN"
                        ) as copy:
                            while chunk := await anyio.to_thread.run_sync(rows.fetchmany, batch):
                                for values in chunk:
                                    await copy.write_row(_convert(table, values))
                                count += len(chunk)
                        copied[table] = count
        finally:
            db.close()
    return copied


def _convert(table: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    if table == "items":
        converted = list(values)
        converted[_FORCED] = bool(converted[_FORCED])
        return tuple(converted)
    return values
