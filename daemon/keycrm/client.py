"""The keyCRM client: one request budget, strict paging, retries that honour Retry-After.

Every request (retries included) takes a slot of the shared `RequestBudget`. Pages are built from
our own parameters rather than by following `next_page_url`, which carries only `?page=N` and
would drop `limit` and the filters. A scan stops at `last_page`, or when `next_page_url` is null,
never because a page came back short.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import stamina
import structlog

from daemon.config.settings import KeycrmSettings
from daemon.core.bodies import BodyTooLarge, read_body
from daemon.core.errors import SourceFatal, SourceRetryable
from daemon.core.models import CatalogEntry, StockLevel
from daemon.core.neterrors import describe_network_error
from daemon.core.retry_after import parse_retry_after
from daemon.core.telemetry import MerchantMetrics
from daemon.keycrm.budget import Priority, RequestBudget
from daemon.keycrm.page_split import NotJson, decode_page
from daemon.keycrm.payloads import (
    ChangedOrder,
    MalformedPage,
    Page,
    page_digest,
    parse_catalog_page,
    parse_order_page,
    parse_stock_page,
    unchanged_page,
)
from daemon.store import PageMark

__all__ = [
    "CATALOG_PAGE_BYTES",
    "MAX_SKU_LENGTH",
    "PAGE_SIZE",
    "STOCK_PAGE_BYTES",
    "KeycrmClient",
    "Lookup",
    "keycrm_time",
    "lookup_batches",
]

PAGE_SIZE = 50  # the most keyCRM's `limit` takes
#: keyCRM publishes no limit; its SKU columns are Laravel strings (255). A longer SKU cannot
#: exist there, so it is never asked for.
MAX_SKU_LENGTH = 255
#: the URL-encoded `filter[offers_sku]` value at most: well under the 8 KiB request lines that
#: common front ends (nginx's default) take, whatever the SKUs look like
MAX_FILTER_LENGTH = 2000
MAX_PAGES = 100_000  # a scan this long means keyCRM's paging is broken; stop rather than loop
#: The most a keyCRM page may weigh once decompressed, by what it holds. A page is at most
#: `PAGE_SIZE` offers, so the ceiling is what 50 offers can honestly weigh, not the 10 MiB every
#: other answer gets: memory follows it (decoded whole, a page of many small values cost ~20 times
#: its size: 190 MiB at 10 MiB; decoded offer by offer, daemon/keycrm/page_split.py, under 10):
#: - a stock page (scan, look-up): an offer is an id, a SKU (255 characters at most), price,
#:   quantity, reserve and a ~60-byte row per warehouse: 1 MiB is 20 KiB an offer, room for
#:   some 300 warehouses each;
#: - a catalog page: each offer carries its product, description included (HTML, repeated in
#:   every variant's offer): 4 MiB is 80 KiB an offer.
#: - an order page: 50 orders with their lines and each line's offer; a big order (a hundred
#:   lines) is some 80 KiB, so the catalog's 4 MiB.
STOCK_PAGE_BYTES = 1024 * 1024
CATALOG_PAGE_BYTES = 4 * 1024 * 1024
_PAGE_BYTES = {
    "scan": STOCK_PAGE_BYTES,
    "lookup": STOCK_PAGE_BYTES,
    "catalog": CATALOG_PAGE_BYTES,
    "orders": CATALOG_PAGE_BYTES,
}
_DEFAULT_429_PAUSE = 10.0
_KEY_REFUSED = ("401", "403")
_ATTEMPTS = 6

T = TypeVar("T")
log = structlog.get_logger("stocksync.keycrm")

# Each failed keyCRM request is logged once, by `_fetch_once`, with its kind, path and attempt;
# stamina's default hooks would log it a second time as `"callable": "<context block>"` and
# count it in a registry nobody scrapes. Retries are the only use of stamina in the process.
stamina.instrumentation.set_on_retry_hooks([])


@dataclass(slots=True)
class Lookup:
    """What a look-up found, and the SKUs it could not ask for, by reason."""

    levels: list[StockLevel] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, sku: str) -> None:
        self.dropped.setdefault(reason, []).append(sku)


def lookup_batches(skus: Sequence[str]) -> list[list[str]]:
    """Cut SKUs into look-up requests: at most a page each, and a filter short enough to send."""
    batches: list[list[str]] = []
    current: list[str] = []
    length = 0
    for sku in skus:
        size = len(quote(sku, safe="")) + 3  # and the encoded comma before it
        if current and (len(current) >= PAGE_SIZE or length + size > MAX_FILTER_LENGTH):
            batches.append(current)
            current, length = [], 0
        current.append(sku)
        length += size
    if current:
        batches.append(current)
    return batches


def keycrm_time(unix: float) -> str:
    """A Unix time as keyCRM's filters take it: UTC, `YYYY-MM-DD HH:MM:SS` (whole seconds)."""
    return datetime.fromtimestamp(int(unix), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _backoff_hook(exc: Exception) -> bool | float:
    """stamina's `on=`: retry source errors that say so, waiting keyCRM's Retry-After if given."""
    if isinstance(exc, SourceRetryable):
        return exc.retry_after if exc.retry_after is not None else True
    return False


class KeycrmClient:
    """Reads stock and catalog from keyCRM within one request budget."""

    def __init__(
        self,
        settings: KeycrmSettings,
        session: aiohttp.ClientSession,
        budget: RequestBudget,
        metrics: MerchantMetrics,
        *,
        details: bool,
    ) -> None:
        self._settings = settings
        self._session = session
        self.budget = budget
        self._metrics = metrics
        self.details = details
        self.last_success: float | None = None

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._settings.api_key.get_secret_value()}",
            "Accept": "application/json",
        }

    async def _fetch(
        self,
        path: str,
        params: dict[str, str],
        kind: str,
        priority: Priority,
        parse: Callable[[Any], Page[T]],
        *,
        mark: PageMark | None = None,
    ) -> Page[T]:
        """GET one page, parse it whole, retrying transient faults within the budget. A scan
        page whose bytes match `mark` is not decoded (`unchanged_page`)."""
        async for attempt in stamina.retry_context(
            on=_backoff_hook, attempts=_ATTEMPTS, timeout=None, wait_initial=1.0, wait_max=60.0
        ):
            with attempt:
                return await self._fetch_once(
                    path, params, kind, priority, parse, mark=mark, attempt=attempt.num
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch_once(
        self,
        path: str,
        params: dict[str, str],
        kind: str,
        priority: Priority,
        parse: Callable[[Any], Page[T]],
        *,
        mark: PageMark | None = None,
        attempt: int = 1,
    ) -> Page[T]:
        """One request; `stocksync_keycrm_up` and the last success follow how it went.

        Down means keyCRM gave nothing usable: no answer, 5xx, 429, a malformed page, or the
        key refused (401/403). A 401/403 on `/order` is not: it is a key without order access,
        which turns the order feed off (`stocksync_order_feed_up`) while stock flows. A 400 or
        414 refuses what was asked, not us, and leaves the gauge as it was."""
        try:
            page = await self._request(
                path, params, kind, priority, parse, mark=mark, attempt=attempt
            )
        except SourceFatal as exc:
            if exc.status in _KEY_REFUSED and kind != "orders":
                self._metrics.keycrm_up.set(0)
            raise
        except (SourceRetryable, MalformedPage):
            self._metrics.keycrm_up.set(0)
            raise
        now = time.time()
        self.last_success = now
        self._metrics.keycrm_up.set(1)
        self._metrics.keycrm_last_success.set(now)
        return page

    async def _request(
        self,
        path: str,
        params: dict[str, str],
        kind: str,
        priority: Priority,
        parse: Callable[[Any], Page[T]],
        *,
        mark: PageMark | None,
        attempt: int,
    ) -> Page[T]:
        url = f"{self._settings.base_url}{path}"
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout)
        try:
            async with (
                self.budget.request(priority),
                self._session.get(
                    url, params=params, headers=self._headers(), timeout=timeout
                ) as response,
            ):
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                body = await read_body(response, _PAGE_BYTES[kind])
        except BodyTooLarge as exc:
            self._metrics.keycrm_requests.labels(kind=kind, status="too_large").inc()
            log.warning("keycrm.answer_too_large", kind=kind, path=path, limit=exc.limit)
            raise SourceRetryable(f"keyCRM {path}: {exc}", status="too_large") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._metrics.keycrm_requests.labels(kind=kind, status="network").inc()
            reason = describe_network_error(exc)
            log.warning(
                "keycrm.request_failed", kind=kind, path=path, error=reason, attempt=attempt
            )
            raise SourceRetryable(f"keyCRM {path}: {reason}", status="network") from exc
        self._metrics.keycrm_requests.labels(kind=kind, status=str(status)).inc()
        if status == 429:
            pause = retry_after if retry_after is not None else _DEFAULT_429_PAUSE
            self.budget.pause(pause)
            log.warning("keycrm.rate_limited", kind=kind, retry_after=pause, attempt=attempt)
            raise SourceRetryable("keyCRM: 429 Too Many Attempts", status="429", retry_after=pause)
        if status >= 500:
            log.warning("keycrm.server_error", kind=kind, status=status, path=path, attempt=attempt)
            raise SourceRetryable(f"keyCRM {path}: HTTP {status}", status=str(status))
        if status in (401, 403):
            raise SourceFatal(f"keyCRM refused the API key (HTTP {status})", status=str(status))
        if status != 200:
            raise SourceFatal(f"keyCRM {path}: HTTP {status}", status=str(status))
        digest = page_digest(body) if kind == "scan" else None
        if mark is not None and digest == mark.digest:
            page: Page[T] = unchanged_page(mark, body)
        else:
            page = self._parse(body, kind, path, parse)
            page.digest = digest
        if page.no_sku:
            self._metrics.offers_skipped.labels(reason="no_sku").inc(page.no_sku)
        return page

    def _parse(self, body: bytes, kind: str, path: str, parse: Callable[[Any], Page[T]]) -> Page[T]:
        """The page in `body`; a malformed one is counted and logged (`MalformedPage`)."""
        try:
            decoded = decode_page(body)
            del body  # a split page keeps its own text; a whole one is all values now
            return parse(decoded)
        except NotJson as exc:
            self._count_malformed(kind, path, "the body is not JSON")
            raise MalformedPage("the body is not JSON") from exc
        except MalformedPage as exc:
            self._count_malformed(kind, path, str(exc))
            raise

    def parse_unchanged(self, page: Page[StockLevel]) -> Page[StockLevel]:
        """Parse a stand-in's kept bytes after all (the store no longer trusts its mark)."""
        assert page.raw is not None
        parsed = self._parse(page.raw, "scan", "/offers/stocks", parse_stock_page)
        parsed.digest = page.digest
        return parsed

    def _count_malformed(self, kind: str, path: str, problem: str) -> None:
        self._metrics.keycrm_requests.labels(kind=kind, status="malformed").inc()
        log.error("keycrm.malformed_page", kind=kind, path=path, problem=problem)

    def _stock_params(self, page: int) -> dict[str, str]:
        params = {"limit": str(PAGE_SIZE), "page": str(page)}
        if self.details:
            params["filter[details]"] = "true"
        return params

    async def _pages(
        self,
        path: str,
        base: dict[str, str],
        kind: str,
        priority: Priority,
        parse: Callable[[Any], Page[T]],
        *,
        marks: Mapping[int, PageMark] | None = None,
    ) -> AsyncIterator[Page[T]]:
        number = 1
        while True:
            mark = None if marks is None else marks.get(number)
            params = {**base, "page": str(number)}
            page = await self._fetch(path, params, kind, priority, parse, mark=mark)
            yield page
            if not page.has_next or number >= MAX_PAGES:
                return
            number += 1

    def scan(self, marks: Mapping[int, PageMark] | None = None) -> AsyncIterator[Page[StockLevel]]:
        """Every page of `/offers/stocks`, in order, each with its bytes' digest. A page whose
        bytes match its number's mark in `marks` comes undecoded (`Page.unchanged`)."""
        params = self._stock_params(1)
        return self._pages(
            "/offers/stocks", params, "scan", Priority.SCAN, parse_stock_page, marks=marks
        )

    def catalog(self) -> AsyncIterator[Page[CatalogEntry]]:
        """Every page of `/offers?include=product`."""
        params = {"limit": str(PAGE_SIZE), "include": "product", "sort": "id"}
        return self._pages("/offers", params, "catalog", Priority.CATALOG, parse_catalog_page)

    def orders(self, since: float, until: float) -> AsyncIterator[Page[ChangedOrder]]:
        """Every page of the orders changed between two Unix times (both included), with their
        lines' offers, oldest id first: an order that changes while we page moves to no
        earlier page, so paging by id can show an order twice but never skip one."""
        params = {
            "limit": str(PAGE_SIZE),
            "include": "products.offer",
            "sort": "id",
            "filter[updated_between]": f"{keycrm_time(since)}, {keycrm_time(until)}",
        }
        return self._pages("/order", params, "orders", Priority.ORDERS, parse_order_page)

    async def lookup(self, skus: Sequence[str]) -> Lookup:
        """Current stock of these SKUs, in as few requests as fit, ahead of the scan.

        A SKU keyCRM cannot hold (too long, or with a comma, which its filter splits on) is not
        asked for. A request keyCRM refuses for its content (400, 414) is halved until the SKU
        it chokes on stands alone and is dropped: one bad SKU never costs the others.
        """
        found = Lookup()
        wanted: list[str] = []
        for sku in dict.fromkeys(skus):
            if not sku or "," in sku or len(sku) > MAX_SKU_LENGTH:
                found.drop("bad_sku", sku)
            else:
                wanted.append(sku)
        for batch in lookup_batches(wanted):
            await self._lookup_batch(batch, found)
        return found

    async def _lookup_batch(self, batch: list[str], found: Lookup) -> None:
        params = {**self._stock_params(1), "filter[offers_sku]": ",".join(batch)}
        wanted = set(batch)
        try:
            levels = [
                level
                async for page in self._pages(
                    "/offers/stocks", params, "lookup", Priority.LOOKUP, parse_stock_page
                )
                for level in page.items
                if level.sku in wanted
            ]
        except SourceFatal as exc:
            if exc.status not in ("400", "414"):
                raise
            if len(batch) == 1:
                found.drop("refused", batch[0])
                return
            middle = len(batch) // 2
            await self._lookup_batch(batch[:middle], found)
            await self._lookup_batch(batch[middle:], found)
            return
        found.levels.extend(levels)
