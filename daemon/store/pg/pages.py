"""The PostgreSQL store's scan pages: what a rescan compares a page's bytes with, and the skip
that moves an unchanged page's scan marks in one statement (`daemon.store.pages` says why it is
safe). Writes take the records lock, as every write to records does: a look-up's write and a
skip never interleave, and revisions are taken in the order records change."""

from __future__ import annotations

from typing import LiteralString

from daemon.store.pages import PageMark, ScanPage
from daemon.store.pg.base import RECORDS, Conn, PostgresBase

__all__ = ["PostgresPages"]

_MARK: LiteralString = (
    "number, digest, size, total, current_page, last_page, next_url, has_next, no_sku"
)
_PAGE: LiteralString = _MARK + ", skus, offer_ids, rev"
_REPLACE: LiteralString = (
    " ON CONFLICT (number) DO UPDATE SET scan = excluded.scan, digest = excluded.digest,"
    " size = excluded.size, total = excluded.total, current_page = excluded.current_page,"
    " last_page = excluded.last_page, next_url = excluded.next_url,"
    " has_next = excluded.has_next, no_sku = excluded.no_sku, skus = excluded.skus,"
    " offer_ids = excluded.offer_ids, rev = excluded.rev"
)


class _Stale(Exception):
    """A record of the page changed since it was recorded: roll the skip back."""


def _check_fresh(skus: list[str], revs: list[tuple[int]], recorded: int) -> None:
    """`_Stale` unless every SKU of the page has a record no newer than the page."""
    if len(revs) != len(set(skus)) or any(rev > recorded for (rev,) in revs):
        raise _Stale


class PostgresPages(PostgresBase):
    """Scan pages (see the module docstring)."""

    @staticmethod
    async def _record_page(conn: Conn, page: ScanPage) -> None:
        """Record a page after its records were written: its revision is higher than theirs."""
        m = page.mark
        await conn.execute(
            "INSERT INTO scan_pages (scan, " + _PAGE + ") VALUES (%s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s::text[], %s::int8[], nextval('records_rev'))" + _REPLACE,
            (
                m.scan,
                m.number,
                m.digest,
                m.size,
                m.total,
                m.current_page,
                m.last_page,
                m.next_url,
                m.has_next,
                m.no_sku,
                page.skus,
                page.offer_ids,
            ),
        )

    async def scan_pages(self, scan: int) -> dict[int, PageMark]:
        async with self._write(lock=RECORDS) as conn:
            await conn.execute("DELETE FROM scan_pages WHERE scan >= %s", (scan,))
            cursor = await conn.execute(
                "SELECT " + _MARK + " FROM scan_pages WHERE scan = %s", (scan - 1,)
            )
            rows = await cursor.fetchall()
        return {
            number: PageMark(scan - 1, number, bytes(digest), *rest)
            for number, digest, *rest in rows
        }

    async def skip_page(self, mark: PageMark, scan: int) -> list[tuple[str, int]] | None:
        try:
            async with self._write(lock=RECORDS) as conn:
                cursor = await conn.execute(
                    "UPDATE scan_pages SET scan = %s WHERE number = %s AND scan = %s"
                    " AND digest = %s RETURNING skus, offer_ids, rev",
                    (scan, mark.number, mark.scan, mark.digest),
                )
                row = await cursor.fetchone()
                if row is None:
                    return None
                skus, offer_ids, recorded = row
                # The one statement that moves the page's marks; it returns each record's
                # revision, so a record changed since the page was recorded undoes it.
                cursor = await conn.execute(
                    "UPDATE records SET seen_scan = GREATEST(seen_scan, %s)"
                    " WHERE sku = ANY(%s::text[]) RETURNING rev",
                    (scan, skus),
                )
                revs = await cursor.fetchall()
                _check_fresh(skus, revs, recorded)
        except _Stale:
            return None
        return list(zip(skus, offer_ids, strict=True))

    async def drop_scan_pages(self, scan: int) -> None:
        async with self._write(lock=RECORDS) as conn:
            await conn.execute("DELETE FROM scan_pages WHERE scan < %s", (scan,))
