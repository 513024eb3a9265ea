"""Each merchant's state in a PostgreSQL schema of its own, and the steps that build one.

One database holds every merchant of a deployment. The tables that coordinate replicas (leases,
keyCRM's window, the look-up queue, config generations) are shared and keyed by merchant
(`daemon.store.pg.migrate`); a merchant's state (records, shares, items and their counts,
history, meta, and the functions its triggers call) lives in its own schema, `stocksync_<id>`.
That keeps one merchant separable with the database's own tools: `pg_dump -n` exports it,
`DROP SCHEMA ... CASCADE` removes it, and no query of one merchant can read another's rows.

Every store transaction starts with `scope(merchant)`: a transaction-local `search_path` (the
merchant's schema, then the session's own, where the shared tables are). It ends with the
transaction, so it is safe behind PgBouncer in transaction mode (`daemon.store.pg.connect`).

A merchant's schema has its own ordered steps, `MERCHANT_MIGRATIONS`, recorded in its own
`merchant_migrations` table (so a dump carries its version). `prepare` creates a missing
schema and brings it up to date; the store does this when a merchant is first opened. A later
change to the per-merchant tables is appended there, never to the database's `MIGRATIONS`.

Advisory lock keys (`lock_key`) mix the merchant in: two merchants' writes never wait for each
other.
"""

from __future__ import annotations

import hashlib
import re
from typing import LiteralString

from psycopg import AsyncConnection, errors, sql
from psycopg.rows import TupleRow

from daemon.core.errors import StateUnusable
from daemon.store.pg.migrate import LOCK_KEY, MIGRATIONS, Migration, SchemaTooNew

__all__ = [
    "DEFAULT_MERCHANT",
    "MERCHANT_MIGRATIONS",
    "SCOPE",
    "SHARED_TABLES",
    "drop",
    "lock_key",
    "merchant_id",
    "prepare",
    "quoted",
    "schema_name",
    "scope",
]

DEFAULT_MERCHANT = "default"
#: Merchant ids as the config accepts them (`daemon.config.settings`): safe in a quoted name.
_MERCHANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_PREFIX = "stocksync_"
_MAX_NAME = 63  # PostgreSQL's identifier limit (NAMEDATALEN - 1); longer names are truncated

#: The tables keyed by merchant that stay shared (a merchant's rows in them go with `drop`).
SHARED_TABLES: tuple[LiteralString, ...] = (
    "leases",
    "keycrm_requests",
    "lookup_queue",
    "config_generations",
    "replica_configs",
)

#: A merchant schema's steps. 1 and 2 are the database steps 4 and 5 that built today's
#: single-merchant tables, run inside the merchant's schema; database step 7 moved `default`'s
#: tables into its schema and recorded both as done. Appended only, as the database's.
MERCHANT_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "state store: records, shares, items, history, meta", MIGRATIONS[3].statements),
    Migration(2, "item counts kept once per statement", MIGRATIONS[4].statements),
    Migration(
        3,
        "the counting trigger counts into its own schema, whatever the session's search_path",
        # `prepare` runs the steps with the search_path set to the merchant's schema alone:
        # FROM CURRENT binds that to the function, so a write to these items from any session
        # (a manual fix, a restore) counts here, never into another merchant's counts.
        ("ALTER FUNCTION stocksync_count_item_rows() SET search_path FROM CURRENT",),
    ),
    Migration(
        4,
        "scan pages a rescan compares with, and each record's revision",
        # daemon/store/pages.py: each page a scan parsed (digest, paging, SKUs), the scan that
        # last saw it (a skip moves it in place) and the revision it was recorded at; each
        # record the revision of its last stock write, from the merchant's own sequence. A page
        # none of whose records is newer is skipped.
        (
            "ALTER TABLE records ADD COLUMN rev bigint NOT NULL DEFAULT 0",
            "CREATE SEQUENCE records_rev",
            """
            CREATE TABLE scan_pages (
                scan bigint NOT NULL,
                number integer NOT NULL,
                digest bytea NOT NULL,
                size integer NOT NULL,
                total bigint,
                current_page bigint,
                last_page bigint,
                next_url boolean NOT NULL,
                has_next boolean NOT NULL,
                no_sku integer NOT NULL,
                skus text[] NOT NULL,
                offer_ids bigint[] NOT NULL,
                rev bigint NOT NULL,
                PRIMARY KEY (number)
            )
            """,
        ),
    ),
    Migration(
        5,
        "the queue's indexes hold only the rows their reads look for",
        # `items_due` the pending items (claims, the next due time), `items_lag` the diverged
        # ones (the oldest divergence): an acknowledged item, most of them most of the time,
        # leaves both, so a claim and an acknowledgement each write two index entries fewer
        # (measured: the server's CPU per pushed item 60 to 47-55 µs). The reads name the
        # predicates (`status = 'pending'`, `diverged_at IS NOT NULL`) as literals, so every
        # plan can use them (tests/postgres/test_batches.py). Built inside the step's
        # transaction: writes to the merchant's items wait for it (seconds per million).
        (
            "DROP INDEX items_due",
            "CREATE INDEX items_due ON items (channel, priority, due_at) WHERE status = 'pending'",
            "DROP INDEX items_lag",
            "CREATE INDEX items_lag ON items (channel, status, diverged_at)"
            " WHERE diverged_at IS NOT NULL",
        ),
    ),
)


def merchant_id(text: str) -> str:
    """`text` if it is a merchant id, else ValueError (an argparse `type`)."""
    if not _MERCHANT.fullmatch(text):
        raise ValueError(f"not a merchant id: {text!r}")
    return text


def schema_name(merchant: str) -> str:
    """`stocksync_<merchant>`; past PostgreSQL's 63 bytes, a prefix and a digest of the whole id
    (PostgreSQL would truncate, and two long ids could then share a schema)."""
    name = _PREFIX + merchant_id(merchant)
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(merchant.encode()).hexdigest()[:8]
    return name[: _MAX_NAME - 9] + "_" + digest


def quoted(merchant: str) -> str:
    """The merchant's schema as an SQL identifier (ids may hold `-`; never a quote)."""
    return '"' + schema_name(merchant) + '"'


def lock_key(merchant: str, lock: int | str) -> int:
    """A signed 64-bit advisory lock key for `lock` of this merchant alone."""
    digest = hashlib.blake2b(f"{merchant}\0{lock}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


#: `scope` as an expression, for a statement that does more (its parameter: `quoted(merchant)`)
SCOPE: LiteralString = (
    "set_config('search_path', %s || ', ' || current_setting('search_path'), true)"
)


async def scope(conn: AsyncConnection[TupleRow], merchant: str) -> None:
    """Inside a transaction: unqualified names are the merchant's tables until it ends."""
    await conn.execute("SELECT " + SCOPE, (quoted(merchant),))


async def _version(conn: AsyncConnection[TupleRow], merchant: str) -> set[int] | None:
    cursor = await conn.execute(
        "SELECT to_regclass(%s)", (quoted(merchant) + ".merchant_migrations",)
    )
    row = await cursor.fetchone()
    if row is None or row[0] is None:
        return None
    cursor = await conn.execute(
        sql.SQL("SELECT version FROM {}").format(_qualified(merchant, "merchant_migrations"))
    )
    return {int(r[0]) for r in await cursor.fetchall()}


def _qualified(merchant: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema_name(merchant), table)


async def prepare(
    conn: AsyncConnection[TupleRow],
    merchant: str,
    migrations: tuple[Migration, ...] = MERCHANT_MIGRATIONS,
) -> list[int]:
    """Create the merchant's schema if missing and apply the steps it has not had; their
    versions (empty: up to date). The database must be migrated (`migrate`) first.

    Up to date costs one read. Otherwise one transaction under the database's migration lock
    (shared: merchants prepare side by side, never during a database step) and the merchant's
    own (exclusive: two replicas opening a new merchant create it once).
    Raises `SchemaTooNew` when the schema has a step this version does not know.
    """
    known = {m.version for m in migrations}
    async with conn.transaction():
        applied = await _version(conn, merchant)
    if applied is not None and applied >= known:
        _refuse_newer(merchant, applied, known)
        return []
    try:
        return await _make(conn, merchant, migrations, known)
    except (errors.UniqueViolation, errors.DuplicateSchema, errors.DuplicateTable):
        # Another replica made the schema while we waited for the merchant's lock, and the
        # catalog this transaction read was older than the lock (an advisory lock does not
        # refresh it): IF NOT EXISTS missed it. A new transaction sees it.
        return await _make(conn, merchant, migrations, known)


async def _make(
    conn: AsyncConnection[TupleRow],
    merchant: str,
    migrations: tuple[Migration, ...],
    known: set[int],
) -> list[int]:
    """`prepare`'s work under the merchant's lock, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared(%s::int8), pg_advisory_xact_lock(%s::int8)",
            (LOCK_KEY, lock_key(merchant, "migrate")),
        )
        await conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema_name(merchant)))
        )
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(_qualified(merchant, "merchant_migrations"))
        )
        applied = await _version(conn, merchant) or set()
        _refuse_newer(merchant, applied, known)
        # Only the merchant's schema: what the steps create goes there, functions included.
        await conn.execute("SELECT set_config('search_path', %s, true)", (quoted(merchant),))
        done = []
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in applied:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO merchant_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            done.append(migration.version)
        return done


def _refuse_newer(merchant: str, applied: set[int], known: set[int]) -> None:
    if applied - known:
        raise SchemaTooNew(
            f"merchant {merchant}'s state is from a newer stocksync (step {max(applied)} of its "
            f"schema; this one knows up to {max(known, default=0)}): upgrade stocksync"
        )


async def drop(conn: AsyncConnection[TupleRow], merchant: str, *, force: bool = False) -> bool:
    """Remove one merchant's state: its schema and its rows in the shared tables, in one
    transaction. Refused (`StateUnusable`) while a replica holds its lease, unless `force`.
    False when there was nothing to drop."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s::int8)", (lock_key(merchant, "migrate"),)
        )
        cursor = await conn.execute(
            "SELECT holder FROM leases WHERE merchant = %s AND expires_at > clock_timestamp()",
            (merchant,),
        )
        held = await cursor.fetchone()
        if held is not None and not force:
            raise StateUnusable(
                f"merchant {merchant} is led by {held[0]}: stop it (remove its file, SIGHUP) first"
            )
        cursor = await conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_name(merchant),)
        )
        found = await cursor.fetchone() is not None
        if found:
            await conn.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema_name(merchant)))
            )
        for table in SHARED_TABLES:
            cursor = await conn.execute(
                sql.SQL("DELETE FROM {} WHERE merchant = %s").format(sql.Identifier(table)),
                (merchant,),
            )
            found = found or cursor.rowcount > 0
        return found
