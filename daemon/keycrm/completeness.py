"""When a keyCRM scan counts as complete: the scan fails closed.

A scan that missed offers would make their SKUs look vanished (and then zeroed), or let the zeroes
its guard held go out as too few to be a mass change. So a scan is complete only when every one
of these holds:

- the offers seen, SKU-less ones included, add up to the `total` keyCRM announced;
- `total` is the same on every page;
- every page but the last is full (`limit` offers);
- each page is the page we asked for, and `last_page` and `next_page_url` agree on whether
  another page follows.

Anything else is an incomplete scan: its pages still update the SKUs they carry, but it vanishes
nothing, lets none of the zeroes it held go out (a complete pass decides them), and the scan is
retried soon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.core.telemetry import INCOMPLETE_REASONS
from daemon.keycrm.payloads import Page

__all__ = ["REASONS", "ScanTally"]

#: the `reason` label values of `stocksync_keycrm_incomplete_scans_total` (a metric contract,
#: declared with the metric)
REASONS = INCOMPLETE_REASONS


@dataclass(slots=True)
class ScanTally:
    """Adds up a scan's pages and says, at the end, whether the scan was complete."""

    page_size: int
    pages: int = 0
    seen: int = 0
    total: int | None = None
    problem: tuple[str, str] | None = None
    more_pages: bool = False

    def _fault(self, reason: str, detail: str) -> None:
        if self.problem is None:
            self.problem = (reason, detail)

    def add(self, page: Page[Any]) -> None:
        """Account for the next page, in order."""
        self.pages += 1
        number = self.pages
        self.more_pages = page.has_next
        self.seen += page.size
        if page.total is None:
            self._fault("no_total", f"page {number} has no total")
        elif self.total is None:
            self.total = page.total
        elif page.total != self.total:
            self._fault("total_changed", f"total went from {self.total} to {page.total}")
        if page.current_page is not None and page.current_page != number:
            self._fault("paging_contradiction", f"asked for page {number}, got {page.current_page}")
        if page.last_page is not None and page.current_page is not None:
            follows = page.current_page < page.last_page
            if follows != page.next_url:
                self._fault(
                    "paging_contradiction",
                    f"page {number}: last_page {page.last_page} but next_page_url "
                    f"{'set' if page.next_url else 'null'}",
                )
        if page.has_next and page.size < self.page_size:
            self._fault("short_page", f"page {number} has {page.size} of {self.page_size} offers")

    def verdict(self) -> tuple[str, str] | None:
        """None if the scan was complete, else `(reason, detail)` for the log and the metric."""
        if self.problem is not None:
            return self.problem
        if self.more_pages:
            return ("page_limit", f"stopped after {self.pages} pages with more announced")
        if self.total is None:
            return ("no_total", "keyCRM announced no total")
        if self.seen != self.total:
            return ("total_mismatch", f"saw {self.seen} offers, keyCRM announced {self.total}")
        return None
