"""The PostgreSQL schema, as ordered steps applied at start, each once.

`schema_migrations` records which steps a database has had. Every replica calls `migrate` when
it starts; several may start at once (a rolling update, three pods scheduled together), so
the whole run happens in one transaction under `pg_advisory_xact_lock`: the second replica
waits, then finds nothing left to do. That lock is transaction-scoped, so it is released with
the transaction and is safe through a pooler. DDL is transactional in PostgreSQL: a failed
step leaves the database as it was.

Steps are only ever appended: a released step is never edited, because databases out there
already had it. These are the database's steps (the shared tables, keyed by merchant); each
merchant's own tables have their own steps in `daemon.store.pg.merchants` (step 7 moved the
single-merchant tables of steps 4 and 5 into merchant `default`'s schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from daemon.core.errors import StateUnusable

__all__ = ["MIGRATIONS", "Migration", "SchemaTooNew", "migrate"]

#: The key of the advisory lock that serialises migrations (any constant bigint; "stocksyn").
LOCK_KEY = 0x73746F636B73796E


class SchemaTooNew(StateUnusable):
    """The database was migrated by a newer stocksync: this one must not write to it."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step: its version (1, 2, ...), a name for people, and its statements in order."""

    version: int
    name: str
    statements: tuple[LiteralString, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "leader lease per merchant",
        (
            """
            CREATE TABLE leases (
                merchant text PRIMARY KEY,
                holder text NOT NULL,
                epoch bigint NOT NULL,
                expires_at timestamptz NOT NULL,
                acquired_at timestamptz NOT NULL
            )
            """,
        ),
    ),
    Migration(
        2,
        "keycrm requests of the shared budget",
        (
            "CREATE TABLE keycrm_requests (merchant text NOT NULL, at timestamptz NOT NULL)",
            "CREATE INDEX keycrm_requests_by_time ON keycrm_requests (merchant, at)",
        ),
    ),
    Migration(
        3,
        "durable look-up queue",
        (
            "CREATE SEQUENCE lookup_queue_seq",
            """
            CREATE TABLE lookup_queue (
                merchant text NOT NULL,
                sku text NOT NULL,
                queued_at timestamptz NOT NULL,
                seq bigint NOT NULL DEFAULT nextval('lookup_queue_seq'),
                claimed_at timestamptz,
                claimed_epoch bigint,
                PRIMARY KEY (merchant, sku)
            )
            """,
            "CREATE INDEX lookup_queue_by_age ON lookup_queue (merchant, queued_at)",
        ),
    ),
    Migration(
        4,
        "state store: records, shares, items, history, meta",
        # Text keys sort by bytes ("C"), as in SQLite, so paging and listings agree.
        (
            """
            CREATE TABLE records (
                sku text COLLATE "C" PRIMARY KEY,
                stock text,
                catalog text,
                seen_scan bigint NOT NULL DEFAULT 0,
                updated_at double precision NOT NULL
            )
            """,
            """
            CREATE TABLE shares (
                channel text COLLATE "C" NOT NULL,
                sku text COLLATE "C" NOT NULL,
                key text COLLATE "C" NOT NULL,
                quantity text NOT NULL,
                price text,
                PRIMARY KEY (channel, sku, key)
            )
            """,
            "CREATE INDEX shares_by_key ON shares (channel, key)",
            """
            CREATE TABLE items (
                channel text COLLATE "C" NOT NULL,
                key text COLLATE "C" NOT NULL,
                desired text NOT NULL,
                changed_at double precision NOT NULL,
                status text NOT NULL,
                diverged_at double precision,
                acked text,
                acked_at double precision,
                sent text,
                forced boolean NOT NULL DEFAULT false,
                priority integer NOT NULL DEFAULT 0,
                attempts integer NOT NULL DEFAULT 0,
                next_attempt double precision NOT NULL DEFAULT 0,
                due_at double precision,
                last_error text,
                held_scan bigint,
                PRIMARY KEY (channel, key)
            )
            """,
            "CREATE INDEX items_due ON items (channel, status, priority, due_at)",
            "CREATE INDEX items_lag ON items (channel, status, diverged_at)",
            # Counts per status and of in-stock items, kept by triggers as in SQLite: /metrics
            # and each scan's guard read a few rows instead of counting millions.
            """
            CREATE TABLE item_counts (
                channel text COLLATE "C" NOT NULL,
                status text NOT NULL,
                n bigint NOT NULL,
                PRIMARY KEY (channel, status)
            )
            """,
            'CREATE TABLE in_stock_counts (channel text COLLATE "C" PRIMARY KEY,'
            " n bigint NOT NULL)",
            """
            CREATE FUNCTION stocksync_in_stock(v text) RETURNS integer
            LANGUAGE sql IMMUTABLE AS $$
                SELECT CASE WHEN v IS NOT NULL
                    AND (COALESCE((v::jsonb ->> 'q')::numeric, 0) > 0
                         OR COALESCE(v::jsonb -> 'l' = 'true'::jsonb, false))
                THEN 1 ELSE 0 END
            $$
            """,
            """
            CREATE FUNCTION stocksync_count_items() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP IN ('UPDATE', 'DELETE') THEN
                    UPDATE item_counts SET n = n - 1
                        WHERE channel = OLD.channel AND status = OLD.status;
                    UPDATE in_stock_counts SET n = n - stocksync_in_stock(OLD.acked)
                        WHERE channel = OLD.channel;
                END IF;
                IF TG_OP IN ('UPDATE', 'INSERT') THEN
                    INSERT INTO item_counts VALUES (NEW.channel, NEW.status, 1)
                        ON CONFLICT (channel, status) DO UPDATE SET n = item_counts.n + 1;
                    INSERT INTO in_stock_counts VALUES (NEW.channel, stocksync_in_stock(NEW.acked))
                        ON CONFLICT (channel) DO UPDATE SET n = in_stock_counts.n + excluded.n;
                END IF;
                RETURN NULL;
            END
            $$
            """,
            "CREATE TRIGGER items_count_rows AFTER INSERT OR DELETE ON items"
            " FOR EACH ROW EXECUTE FUNCTION stocksync_count_items()",
            "CREATE TRIGGER items_count_moves AFTER UPDATE ON items FOR EACH ROW"
            " WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.acked IS DISTINCT FROM NEW.acked)"
            " EXECUTE FUNCTION stocksync_count_items()",
            "CREATE INDEX items_held ON items (held_scan) WHERE held_scan IS NOT NULL",
            "CREATE INDEX items_sending ON items (status) WHERE status = 'sending'",
            """
            CREATE TABLE history (
                id bigserial PRIMARY KEY,
                channel text COLLATE "C" NOT NULL,
                key text COLLATE "C" NOT NULL,
                before text,
                after text NOT NULL,
                outcome text NOT NULL,
                error text,
                at double precision NOT NULL
            )
            """,
            "CREATE INDEX history_by_key ON history (channel, key, at)",
            "CREATE INDEX history_by_time ON history (at)",
            "CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL)",
        ),
    ),
    Migration(
        5,
        "item counts kept once per statement",
        # The row triggers of step 4 ran four statements for every item written: most of the
        # time of a batch write. These count all of a statement's rows at once from its
        # transition tables (what it took from each channel's counts, what it added). A trigger
        # with transition tables has one event, and a query may name only the tables its event
        # has: hence three triggers, and one function whose branches differ only in `moved`.
        (
            "DROP TRIGGER items_count_rows ON items",
            "DROP TRIGGER items_count_moves ON items",
            """
            CREATE FUNCTION stocksync_count_item_rows() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    WITH moved AS (
                        SELECT channel, status, 1 AS n, stocksync_in_stock(acked) AS stock
                        FROM new_rows
                    ), by_status AS (
                        INSERT INTO item_counts AS c
                        SELECT channel, status, sum(n) FROM moved GROUP BY channel, status
                        ORDER BY channel, status
                        ON CONFLICT (channel, status) DO UPDATE SET n = c.n + excluded.n
                    )
                    INSERT INTO in_stock_counts AS c
                    SELECT channel, sum(stock) FROM moved GROUP BY channel ORDER BY channel
                    ON CONFLICT (channel) DO UPDATE SET n = c.n + excluded.n;
                ELSIF TG_OP = 'UPDATE' THEN
                    WITH moved AS (
                        SELECT channel, status, -1 AS n, -stocksync_in_stock(acked) AS stock
                        FROM old_rows
                        UNION ALL
                        SELECT channel, status, 1, stocksync_in_stock(acked) FROM new_rows
                    ), by_status AS (
                        INSERT INTO item_counts AS c
                        SELECT channel, status, sum(n) FROM moved GROUP BY channel, status
                        HAVING sum(n) <> 0 ORDER BY channel, status
                        ON CONFLICT (channel, status) DO UPDATE SET n = c.n + excluded.n
                    )
                    INSERT INTO in_stock_counts AS c
                    SELECT channel, sum(stock) FROM moved GROUP BY channel
                    HAVING sum(stock) <> 0 ORDER BY channel
                    ON CONFLICT (channel) DO UPDATE SET n = c.n + excluded.n;
                ELSE
                    WITH moved AS (
                        SELECT channel, status, -1 AS n, -stocksync_in_stock(acked) AS stock
                        FROM old_rows
                    ), by_status AS (
                        INSERT INTO item_counts AS c
                        SELECT channel, status, sum(n) FROM moved GROUP BY channel, status
                        ORDER BY channel, status
                        ON CONFLICT (channel, status) DO UPDATE SET n = c.n + excluded.n
                    )
                    INSERT INTO in_stock_counts AS c
                    SELECT channel, sum(stock) FROM moved GROUP BY channel ORDER BY channel
                    ON CONFLICT (channel) DO UPDATE SET n = c.n + excluded.n;
                END IF;
                RETURN NULL;
            END
            $$
            """,
            "CREATE TRIGGER items_count_inserts AFTER INSERT ON items"
            " REFERENCING NEW TABLE AS new_rows"
            " FOR EACH STATEMENT EXECUTE FUNCTION stocksync_count_item_rows()",
            "CREATE TRIGGER items_count_updates AFTER UPDATE ON items"
            " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
            " FOR EACH STATEMENT EXECUTE FUNCTION stocksync_count_item_rows()",
            "CREATE TRIGGER items_count_deletes AFTER DELETE ON items"
            " REFERENCING OLD TABLE AS old_rows"
            " FOR EACH STATEMENT EXECUTE FUNCTION stocksync_count_item_rows()",
        ),
    ),
    Migration(
        6,
        "config fingerprints: their generations and each replica's heartbeat",
        # daemon/replicas/configs.py: a fingerprint's generation is given once, when it is first
        # published (one higher than any before it), and never changes; a replica's row says
        # which fingerprint it runs and when it last said so (live: within lease_ttl).
        (
            """
            CREATE TABLE config_generations (
                merchant text NOT NULL,
                fingerprint text NOT NULL,
                generation bigint NOT NULL,
                first_seen timestamptz NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (merchant, fingerprint),
                UNIQUE (merchant, generation)
            )
            """,
            """
            CREATE TABLE replica_configs (
                merchant text NOT NULL,
                holder text NOT NULL,
                fingerprint text NOT NULL,
                seen_at timestamptz NOT NULL,
                PRIMARY KEY (merchant, holder)
            )
            """,
        ),
    ),
    Migration(
        7,
        "each merchant's state in a schema of its own: today's state is merchant default's",
        # daemon/store/pg/merchants.py: a merchant's tables, and the functions their triggers
        # call, live in `stocksync_<merchant>`. SET SCHEMA moves a table with its rows, indexes,
        # triggers and owned sequences, without copying; the shared tables stay. The steps that
        # built these tables are merchant steps 1 and 2 of the schema, recorded done.
        (
            "CREATE SCHEMA stocksync_default",
            "ALTER TABLE records SET SCHEMA stocksync_default",
            "ALTER TABLE shares SET SCHEMA stocksync_default",
            "ALTER TABLE items SET SCHEMA stocksync_default",
            "ALTER TABLE item_counts SET SCHEMA stocksync_default",
            "ALTER TABLE in_stock_counts SET SCHEMA stocksync_default",
            "ALTER TABLE history SET SCHEMA stocksync_default",
            "ALTER TABLE meta SET SCHEMA stocksync_default",
            "ALTER FUNCTION stocksync_in_stock(text) SET SCHEMA stocksync_default",
            "ALTER FUNCTION stocksync_count_items() SET SCHEMA stocksync_default",
            "ALTER FUNCTION stocksync_count_item_rows() SET SCHEMA stocksync_default",
            """
            CREATE TABLE stocksync_default.merchant_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
            )
            """,
            "INSERT INTO stocksync_default.merchant_migrations (version, name) VALUES"
            " (1, 'state store: records, shares, items, history, meta'),"
            " (2, 'item counts kept once per statement')",
        ),
    ),
    Migration(
        8,
        "replica membership: one heartbeat row per live replica",
        # daemon/replicas/members.py: a replica is live while its row has not expired (database
        # clock); merchants are shared out over the live ones (daemon/replicas/assignment.py).
        (
            """
            CREATE TABLE replica_members (
                holder text PRIMARY KEY,
                expires_at timestamptz NOT NULL,
                joined_at timestamptz NOT NULL DEFAULT clock_timestamp()
            )
            """,
        ),
    ),
)


async def migrate(
    conn: AsyncConnection[TupleRow], migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[int]:
    """Apply the steps the database has not had; return their versions (empty: up to date).

    Raises `SchemaTooNew` when the database has a step this version does not know.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
            )
            """
        )
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = {int(row[0]) for row in await cursor.fetchall()}
        known = {m.version for m in migrations}
        if applied - known:
            raise SchemaTooNew(
                f"the database schema is from a newer stocksync (version {max(applied)}; this "
                f"one knows up to {max(known, default=0)}): upgrade stocksync"
            )
        done = []
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in applied:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            done.append(migration.version)
        return done
