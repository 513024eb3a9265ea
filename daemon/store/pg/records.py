"""The PostgreSQL store's keyCRM records and the planning shares: what the scans and webhooks
bring in, and which channel items each SKU feeds. Writes to records take the records lock."""

from __future__ import annotations

from collections.abc import Sequence

from daemon.core.models import CatalogEntry, StockLevel, StockRecord, plain
from daemon.rules.plan import Contribution
from daemon.store import rows as shared
from daemon.store.codec import encode_stock
from daemon.store.pages import ScanPage
from daemon.store.pg.base import RECORDS, Conn, columns
from daemon.store.pg.pages import PostgresPages

__all__ = ["PostgresRecords"]


class PostgresRecords(PostgresPages):
    """keyCRM records and shares (see the module docstring)."""

    @staticmethod
    async def _existing(conn: Conn, skus: Sequence[str]) -> dict[str, shared.Stored]:
        cursor = await conn.execute(
            "SELECT sku, stock, catalog FROM records WHERE sku = ANY(%s)", (list(skus),)
        )
        return {sku: (stock, catalog) for sku, stock, catalog in await cursor.fetchall()}

    async def save_stock(
        self, levels: Sequence[StockLevel], scan: int | None, page: ScanPage | None = None
    ) -> list[StockRecord]:
        now = self._clock()
        changed: list[StockRecord] = []
        rows: dict[str, str] = {}  # one row per SKU: the last level given wins, as before
        async with self._write(lock=RECORDS) as conn:
            old = await self._existing(conn, [level.sku for level in levels])
            for level in levels:
                text = encode_stock(level)
                record = shared.stock_change(level.sku, text, old.get(level.sku, (None, None)))
                if record is not None:
                    changed.append(record)
                rows[level.sku] = text
            if rows:
                skus = sorted(rows)
                # A record whose stock changes takes a new revision (`daemon.store.pages`);
                # updated_at says when the stock last changed, as in SQLite.
                await conn.execute(
                    "INSERT INTO records (sku, stock, seen_scan, updated_at, rev)"
                    " SELECT sku, stock, %s::int8, %s::float8, nextval('records_rev')"
                    " FROM unnest(%s::text[], %s::text[]) AS r(sku, stock)"
                    " ON CONFLICT (sku) DO UPDATE SET stock = excluded.stock,"
                    " seen_scan = GREATEST(records.seen_scan, excluded.seen_scan),"
                    " updated_at = CASE WHEN records.stock IS NOT DISTINCT FROM excluded.stock"
                    " THEN records.updated_at ELSE excluded.updated_at END,"
                    " rev = CASE WHEN records.stock IS NOT DISTINCT FROM excluded.stock"
                    " THEN records.rev ELSE excluded.rev END",
                    (scan or 0, float(now), skus, [rows[sku] for sku in skus]),
                )
            if page is not None:
                await self._record_page(conn, page)
        return changed

    async def save_catalog(self, entries: Sequence[CatalogEntry]) -> list[StockRecord]:
        now = self._clock()
        async with self._write(lock=RECORDS) as conn:
            old = await self._existing(conn, [entry.sku for entry in entries])
            changed, rows = shared.catalog_changes(entries, old)
            if rows:
                skus = sorted(rows)
                await conn.execute(
                    "INSERT INTO records (sku, catalog, updated_at)"
                    " SELECT sku, catalog, %s::float8"
                    " FROM unnest(%s::text[], %s::text[]) AS r(sku, catalog)"
                    " ON CONFLICT (sku) DO UPDATE SET catalog = excluded.catalog,"
                    " updated_at = excluded.updated_at",
                    (float(now), skus, [rows[sku] for sku in skus]),
                )
        return changed

    async def vanished(self, scan: int) -> list[StockRecord]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT sku, stock, catalog FROM records"
                " WHERE stock IS NOT NULL AND seen_scan < %s",
                (scan - 1,),
            )
            rows = await cursor.fetchall()
        gone = shared.vanished_records(rows)
        if gone:
            await self.save_stock([r.stock for r in gone], None)
        return gone

    async def records(self, after: str = "", limit: int = 500) -> list[StockRecord]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND sku > %s"
                " ORDER BY sku LIMIT %s",
                (after, limit),
            )
            rows = await cursor.fetchall()
        return shared.stocked_records(rows)

    async def records_of(self, skus: Sequence[str]) -> list[StockRecord]:
        async with self._read() as conn:
            cursor = await conn.execute(
                "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL"
                " AND sku = ANY(%s) ORDER BY sku",
                (sorted(set(skus)),),
            )
            rows = await cursor.fetchall()
        return shared.stocked_records(rows)

    # --- planning ------------------------------------------------------------------------------

    async def replace_shares(
        self, channel: str, skus: Sequence[str], shares: Sequence[tuple[str, Contribution]]
    ) -> dict[str, list[Contribution]]:
        affected: set[str] = {share.key for _, share in shares}
        async with self._write(channel=channel) as conn:
            cursor = await conn.execute(
                "DELETE FROM shares WHERE channel = %s AND sku = ANY(%s) RETURNING key",
                (channel, list(skus)),
            )
            affected.update(key for (key,) in await cursor.fetchall())
            # One row per (sku, key): the last share given wins, as one upsert per row did.
            rows = {
                (sku, s.key): (sku, s.key, plain(s.quantity),
                               None if s.price is None else plain(s.price))
                for sku, s in shares
            }  # fmt: skip
            if rows:
                await conn.execute(
                    "INSERT INTO shares (channel, sku, key, quantity, price)"
                    " SELECT %s::text, *"
                    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
                    " ON CONFLICT (channel, sku, key)"
                    " DO UPDATE SET quantity = excluded.quantity, price = excluded.price",
                    (channel, *columns([rows[k] for k in sorted(rows)], 4)),
                )
            cursor = await conn.execute(
                "SELECT key, quantity, price FROM shares WHERE channel = %s AND key = ANY(%s)"
                " ORDER BY key, sku",
                (channel, sorted(affected)),
            )
            return shared.contributions(affected, await cursor.fetchall())
