"""`stocksync migrate-state --from DSN --to FILE`: one merchant's PostgreSQL state as a SQLite
file, whole or not at all (the way back of `migrate_state.copy_state`).

Everything is read in one read-only, repeatable-read transaction (a consistent snapshot even
while a leader writes) from the merchant's schema, plus its webhooks still waiting in the shared
look-up queue, and written into a new file beside the target that is renamed into place only
when complete: a failure leaves no target, and an existing target is refused. The counts per
status and in stock are the database's own (both backends keep the same). Records come without
their rescan digests (PostgreSQL keeps none), so the first rescan compares them in full. Items
left `sending` stay so: the daemon recovers them at start, as after a crash.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, LiteralString

import anyio
import anyio.to_thread
from psycopg import IsolationLevel, sql

from daemon.store.migrate_state import TABLES, TargetNotEmpty
from daemon.store.pg.connect import connect
from daemon.store.pg.merchants import DEFAULT_MERCHANT, schema_name, scope
from daemon.store.sqlite.schema import migrate as migrate_sqlite

__all__ = ["export_state"]

#: the tables copied besides `TABLES`: the counts, as both backends keep them
_COUNTS: dict[LiteralString, LiteralString] = {
    "item_counts": "channel, status, n",
    "in_stock_counts": "channel, n",
}
_ORDER: dict[str, LiteralString] = {"history": " ORDER BY id"}
_FORCED = TABLES["items"].split(", ").index("forced")


async def export_state(
    dsn: str,
    target: Path,
    *,
    password: str | None = None,
    merchant: str = DEFAULT_MERCHANT,
    batch: int = 5000,
) -> dict[str, int]:
    """Write the merchant's state into the new SQLite file `target`; rows per table.

    Raises `TargetNotEmpty` (the file exists; or the merchant has no state in the database),
    OSError, or the database's error (no file then)."""
    db, partial = await anyio.to_thread.run_sync(_start, target)
    try:
        copied = await _copy(dsn, password, merchant, db, batch)
        db.execute("COMMIT")
    except BaseException:
        db.close()
        partial.unlink(missing_ok=True)
        raise
    db.close()
    partial.rename(target)
    return copied


def _start(target: Path) -> tuple[sqlite3.Connection, Path]:
    """A new file beside `target`, migrated, in an open transaction."""
    if target.exists():
        raise TargetNotEmpty(f"{target} exists: give a new file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    db = sqlite3.connect(partial, isolation_level=None, check_same_thread=False)
    migrate_sqlite(db)
    db.execute("BEGIN IMMEDIATE")
    return db, partial


async def _copy(
    dsn: str, password: str | None, merchant: str, db: sqlite3.Connection, batch: int
) -> dict[str, int]:
    copied: dict[str, int] = {}
    async with await connect(dsn, password=password) as conn:
        await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction():
            cursor = await conn.execute("SELECT to_regnamespace(%s)", (schema_name(merchant),))
            found = await cursor.fetchone()
            if found is None or found[0] is None:
                raise TargetNotEmpty(f"the database holds no state of merchant {merchant}")
            await scope(conn, merchant)
            for table, columns in {**TABLES, **_COUNTS}.items():
                query = sql.SQL("SELECT " + columns + " FROM " + table + _ORDER.get(table, ""))
                insert = _insert(table, columns)
                count = 0
                async with conn.cursor(name=f"export_{table}") as rows:
                    await rows.execute(query)
                    while chunk := await rows.fetchmany(batch):
                        db.executemany(insert, [_convert(table, row) for row in chunk])
                        count += len(chunk)
                copied[table] = count
            cursor = await conn.execute(
                "SELECT sku, extract(epoch FROM queued_at)::float8 FROM lookup_queue"
                " WHERE merchant = %s ORDER BY seq",
                (merchant,),
            )
            waiting = await cursor.fetchall()
            db.executemany("INSERT INTO lookup_queue (sku, queued_at) VALUES (?, ?)", waiting)
            copied["lookup_queue"] = len(waiting)
    return copied


def _insert(table: str, columns: str) -> str:
    marks = ", ".join("?" * len(columns.split(", ")))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks})"


def _convert(table: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    if table == "items":
        converted = list(values)
        converted[_FORCED] = int(converted[_FORCED])
        return tuple(converted)
    return values
