"""What a store keeps of each page of a scan, so that a rescan can skip a page that did not change.

A rescan that finds nothing changed used to decode every page, parse every offer and compare
every record: most of its CPU. Now each page a scan parses is recorded beside the records it
wrote, in the same transaction: the digest of its raw bytes, its paging (what
`daemon.keycrm.completeness.ScanTally` adds up) and its SKUs in order. The next scan that gets
the same bytes for the same page number moves those SKUs' scan marks in one statement instead.

Why that leaves the store as parsing would have (the invariant the tests hold):

- Equal bytes parse to equal levels, the same paging and the same SKUs: the tally, the duplicate
  check and the scan marks need nothing else. The digest's key changes with the parser's
  (`daemon.keycrm.payloads`), so a page recorded by another parser is never trusted.
- A record written by anything after the page was recorded (a look-up, a vanished SKU zeroed,
  another page of a scan holding the same SKU) takes a higher revision than the page's: the
  skip finds it and the page is parsed as before. Each record carries the revision of its last
  stock write (`rev`), each page the revision of its recording; the skip moves the marks only
  if no record of the page is newer.
- A page that dropped a duplicate SKU is not recorded: which offer of a duplicated SKU counts
  depends on the pages before it, which may have changed.
- Only the pages of the last complete scan are compared with. A store keeps one row a page
  number, marked with the scan that last saw it: a parse records it under the running scan, a
  skip moves its mark in place. Once the scan completes, its rows are the ones compared with and
  rows no page of it had go (`drop_scan_pages`); a scan that failed halfway is started again
  from what the last complete one left (`scan_pages` forgets every row it marked, so a page it
  touched is parsed again).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PageMark", "ScanPage"]


@dataclass(frozen=True, slots=True)
class PageMark:
    """One recorded page without its SKUs: what a scan compares a fresh page with."""

    #: the scan generation that recorded it
    scan: int
    number: int
    #: digest of the page's raw bytes (`daemon.keycrm.payloads.page_digest`)
    digest: bytes
    #: offers on the page, SKU-less ones included, and the envelope's paging
    size: int
    total: int | None
    current_page: int | None
    last_page: int | None
    next_url: bool
    has_next: bool
    #: offers without a SKU (counted as skipped, as a parse counts them)
    no_sku: int


@dataclass(frozen=True, slots=True)
class ScanPage:
    """A page as a scan records it: its mark and its offers' SKUs and ids, in page order."""

    mark: PageMark
    skus: list[str]
    offer_ids: list[int]
