"""The SQLite store's scan pages: what a rescan compares a page's bytes with, and the skip that
moves an unchanged page's scan marks in one statement (`daemon.store.pages` says why it is safe).
"""

from __future__ import annotations

import orjson

from daemon.store.pages import PageMark, ScanPage
from daemon.store.sqlite.base import SQLiteBase, in_thread

__all__ = ["SQLitePages"]

_MARK = "number, digest, size, total, current_page, last_page, next_url, has_next, no_sku"
_PAGE = f"{_MARK}, skus, offer_ids, rev"


class _Stale(Exception):
    """A record of the page changed since it was recorded: roll the skip back."""


def _check_fresh(skus: list[str], revs: list[tuple[int]], recorded: int) -> None:
    """`_Stale` unless every SKU of the page has a record no newer than the page."""
    if len(revs) != len(set(skus)) or any(rev > recorded for (rev,) in revs):
        raise _Stale


class SQLitePages(SQLiteBase):
    """Scan pages (see the module docstring)."""

    def _next_rev(self) -> int:
        """A revision higher than any record or page has (inside a write transaction)."""
        row = self._db.execute("UPDATE records_rev SET n = n + 1 RETURNING n").fetchone()
        return int(row[0])

    def _record_page(self, page: ScanPage, rev: int) -> None:
        m = page.mark
        self._db.execute(
            f"INSERT OR REPLACE INTO scan_pages (scan, {_PAGE}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                m.scan,
                m.number,
                m.digest,
                m.size,
                m.total,
                m.current_page,
                m.last_page,
                int(m.next_url),
                int(m.has_next),
                m.no_sku,
                orjson.dumps(page.skus).decode(),
                orjson.dumps(page.offer_ids).decode(),
                rev,
            ),
        )

    @in_thread
    def scan_pages(self, scan: int) -> dict[int, PageMark]:
        with self._tx():
            self._db.execute("DELETE FROM scan_pages WHERE scan >= ?", (scan,))
        rows = self._db.execute(f"SELECT {_MARK} FROM scan_pages WHERE scan = ?", (scan - 1,))
        return {
            number: PageMark(
                scan - 1, number, digest, size, total, current, last, bool(url), bool(more), bare
            )
            for number, digest, size, total, current, last, url, more, bare in rows
        }

    @in_thread
    def skip_page(self, mark: PageMark, scan: int) -> list[tuple[str, int]] | None:
        try:
            with self._tx():
                row = self._db.execute(
                    "UPDATE scan_pages SET scan = ? WHERE number = ? AND scan = ? AND digest = ? "
                    "RETURNING skus, offer_ids, rev",
                    (scan, mark.number, mark.scan, mark.digest),
                ).fetchone()
                if row is None:
                    return None
                skus_json, ids_json, recorded = row
                # The one statement that moves the page's marks; it returns each record's
                # revision, so a record changed since the page was recorded undoes it.
                revs = self._db.execute(
                    "UPDATE records SET seen_scan = MAX(seen_scan, ?) "
                    "WHERE sku IN (SELECT value FROM json_each(?)) RETURNING rev",
                    (scan, skus_json),
                ).fetchall()
                skus: list[str] = orjson.loads(skus_json)
                _check_fresh(skus, revs, recorded)
        except _Stale:
            return None
        return list(zip(skus, orjson.loads(ids_json), strict=True))

    @in_thread
    def drop_scan_pages(self, scan: int) -> None:
        with self._tx():
            self._db.execute("DELETE FROM scan_pages WHERE scan < ?", (scan,))
