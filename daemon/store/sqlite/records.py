"""The SQLite store's keyCRM records and the planning shares: what the scans and webhooks
bring in, and which channel items each SKU feeds."""

from __future__ import annotations

import json
from collections.abc import Sequence

from daemon.core.models import CatalogEntry, StockLevel, StockRecord, plain
from daemon.rules.plan import Contribution
from daemon.store import rows as shared
from daemon.store.codec import encode_stock
from daemon.store.pages import ScanPage
from daemon.store.sqlite.base import chunks, in_clause, in_thread
from daemon.store.sqlite.pages import SQLitePages

__all__ = ["SQLiteRecords"]


class SQLiteRecords(SQLitePages):
    """keyCRM records and shares (see the module docstring)."""

    def _existing(self, skus: Sequence[str]) -> dict[str, shared.Stored]:
        rows = self._select_in("SELECT sku, stock, catalog FROM records WHERE sku IN ({in})", skus)
        return {sku: (stock, catalog) for sku, stock, catalog in rows}

    @in_thread
    def save_stock(
        self, levels: Sequence[StockLevel], scan: int | None, page: ScanPage | None = None
    ) -> list[StockRecord]:
        now = self._clock()
        changed: list[StockRecord] = []
        rows = []
        seen = []
        with self._tx():
            old = self._select_in(
                "SELECT sku, stock, catalog, digest FROM records WHERE sku IN ({in})",
                [level.sku for level in levels],
            )
            existing = {sku: (stock, catalog, digest) for sku, stock, catalog, digest in old}
            for level in levels:
                stock, catalog, digest = existing.get(level.sku, (None, None, None))
                if level.digest is not None and level.digest == digest:
                    # The same bytes as last time: the same level. Only the scan mark moves.
                    seen.append(level.sku)
                    continue
                text = encode_stock(level)
                record = shared.stock_change(level.sku, text, (stock, catalog))
                if record is not None:
                    changed.append(record)
                rows.append((level.sku, text, level.digest, scan or 0, now))
            # Every record written, and the page, take a new revision: a page recorded
            # earlier that holds one of these SKUs is no longer what its records hold.
            rev = self._next_rev() if rows or page is not None else 0
            self._db.executemany(
                "INSERT INTO records (sku, stock, digest, seen_scan, updated_at, rev) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sku) DO UPDATE SET stock = excluded.stock, "
                "digest = excluded.digest, rev = excluded.rev, "
                "seen_scan = MAX(records.seen_scan, excluded.seen_scan), "
                "updated_at = CASE WHEN records.stock IS excluded.stock "
                "THEN records.updated_at ELSE excluded.updated_at END",
                [(*row, rev) for row in rows],
            )
            if scan is not None and seen:
                # One statement for the page's unchanged SKUs, not one per SKU.
                self._db.execute(
                    "UPDATE records SET seen_scan = :scan WHERE sku IN "
                    "(SELECT value FROM json_each(:skus)) AND seen_scan < :scan",
                    {"scan": scan, "skus": json.dumps(seen)},
                )
            if page is not None:
                self._record_page(page, rev)
        return changed

    @in_thread
    def save_catalog(self, entries: Sequence[CatalogEntry]) -> list[StockRecord]:
        now = self._clock()
        with self._tx():
            old = self._existing([entry.sku for entry in entries])
            changed, texts = shared.catalog_changes(entries, old)
            rows = [(sku, text, now) for sku, text in texts.items()]
            self._db.executemany(
                "INSERT INTO records (sku, catalog, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (sku) DO UPDATE SET catalog = excluded.catalog, "
                "updated_at = excluded.updated_at",
                rows,
            )
        return changed

    async def vanished(self, scan: int) -> list[StockRecord]:
        gone = await self._run(self._vanished, scan)
        if gone:
            await self.save_stock([r.stock for r in gone], None)
        return gone

    def _vanished(self, scan: int) -> list[StockRecord]:
        rows = self._db.execute(
            "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND seen_scan < ?",
            (scan - 1,),
        ).fetchall()
        return shared.vanished_records(rows)

    @in_thread
    def records(self, after: str = "", limit: int = 500) -> list[StockRecord]:
        rows = self._db.execute(
            "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND sku > ? "
            "ORDER BY sku LIMIT ?",
            (after, limit),
        )
        return shared.stocked_records(rows)

    @in_thread
    def records_of(self, skus: Sequence[str]) -> list[StockRecord]:
        rows = self._select_in(
            "SELECT sku, stock, catalog FROM records WHERE stock IS NOT NULL AND sku IN ({in})",
            sorted(set(skus)),
        )
        return sorted(shared.stocked_records(rows), key=lambda r: r.sku)

    # --- planning ------------------------------------------------------------------------------

    @in_thread
    def replace_shares(
        self, channel: str, skus: Sequence[str], shares: Sequence[tuple[str, Contribution]]
    ) -> dict[str, list[Contribution]]:
        affected: set[str] = {share.key for _, share in shares}
        with self._tx():
            rows = self._select_in(
                "SELECT key FROM shares WHERE channel = ? AND sku IN ({in})", skus, channel
            )
            affected.update(key for (key,) in rows)
            for chunk in chunks(skus):
                self._db.execute(
                    in_clause("DELETE FROM shares WHERE channel = ? AND sku IN ({in})", chunk),
                    (channel, *chunk),
                )
            self._db.executemany(
                "INSERT OR REPLACE INTO shares (channel, sku, key, quantity, price) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        channel,
                        sku,
                        s.key,
                        plain(s.quantity),
                        None if s.price is None else plain(s.price),
                    )
                    for sku, s in shares
                ],
            )
            rows = self._select_in(
                "SELECT key, quantity, price FROM shares WHERE channel = ? AND key IN ({in})",
                sorted(affected),
                channel,
            )
            return shared.contributions(affected, rows)
