"""keyCRM response bodies to records, strictly: a page is used whole or not at all.

A malformed page raises `MalformedPage` (a retryable source error): the client counts it, logs
it and asks again; nothing of it reaches the store. Offers without a SKU are skipped and counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

import orjson

from daemon.core.errors import SourceRetryable
from daemon.core.models import CatalogEntry, StockLevel, WarehouseStock
from daemon.keycrm.page_split import NotJson, RawOffer
from daemon.store import PageMark

__all__ = [
    "ChangedOrder",
    "MalformedPage",
    "Page",
    "page_digest",
    "parse_catalog_page",
    "parse_order_page",
    "parse_stock_page",
    "raw_digest",
    "unchanged_page",
]


class MalformedPage(SourceRetryable):
    """keyCRM answered 200 with a body that is not what its API promises."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status="malformed")


T = TypeVar("T")


class _Bad(Exception):
    """One offer is malformed; `text` starts with the path inside the offer (`.quantity ...`).

    The offer's index is added by the page loop, only on failure: a rescan parses a million
    offers and must not format a path string for every field of every one of them.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(slots=True)
class Page(Generic[T]):
    """One page of results and where paging stands."""

    items: list[T]
    last_page: int | None
    has_next: bool
    no_sku: int = 0
    total: int | None = field(default=None)
    #: offers on the page as keyCRM sent them, SKU-less ones included (scan completeness)
    size: int = 0
    current_page: int | None = None
    #: whether `next_page_url` was set: checked against `last_page` (they must agree)
    next_url: bool = False
    #: `page_digest` of the body (scan pages only)
    digest: bytes | None = None
    #: set on a scan page whose bytes equal a recorded page's: `items` is empty, the paging is
    #: the mark's, and `raw` keeps the body in case the store no longer trusts the mark
    unchanged: PageMark | None = None
    raw: bytes | None = None


#: No stock or price is near this; `1e999999999` in a page would otherwise cost a billion digits.
MAX_NUMBER = Decimal(10) ** 15
#: integers below this become Decimals directly (the same value the text path gives)
_PLAIN_INT = 10**15
_PLACES = Decimal(10) ** -12  # finer than any stock or price; keeps every number 28 digits
#: keyCRM's ids and page numbers are 64-bit integers; the store keeps them as such.
_MAX_INT = 2**63 - 1


def _number(value: Any, where: str) -> Decimal:
    if type(value) is int and -_PLAIN_INT < value < _PLAIN_INT:
        return Decimal(value)  # most stock is a plain integer: skip the text round trip
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(f"{where} is not a number")
    text = str(value)
    try:
        number = Decimal(text.strip()) if len(text) <= 100 else Decimal("NaN")
    except InvalidOperation:
        raise _Bad(f"{where} is not a number") from None
    if not number.is_finite():
        raise _Bad(f"{where} is not a finite number")
    if number and number.adjusted() >= 15:  # compares exponents: abs() itself could overflow
        raise _Bad(f"{where} is out of range")
    if number.as_tuple().exponent < -12:  # type: ignore[operator] # finite: an int
        number = number.quantize(_PLACES)
    return number


#: Changes whenever parsing would turn the same offer into a different level, so a digest kept
#: by an older version never vouches for a level this one would parse differently.
_DIGEST_PERSON = b"stock-level-v1"


def raw_digest(item: dict[str, Any]) -> bytes | None:
    """A fingerprint of one offer exactly as keyCRM sent it (None: it has none, see below).

    The store keeps it beside the record: an offer whose bytes did not change since the last
    scan cannot have a different level, so a rescan skips encoding and comparing it (most of a
    rescan's cost at a million SKUs). Eight bytes: a false match needs a 64-bit collision.
    An offer orjson cannot write back (an integer past 64 bits in a field stocksync ignores)
    gets no digest: the store then compares its level in full, as before digests existed.
    """
    try:
        raw = orjson.dumps(item)
    except TypeError:  # orjson.JSONEncodeError is one
        return None
    return hashlib.blake2b(raw, digest_size=8, person=_DIGEST_PERSON).digest()


def page_digest(body: bytes) -> bytes:
    """A fingerprint of a whole page's bytes: a scan page with the same one as a page of the
    last complete scan is skipped (`daemon.store.pages`). Keyed by the parser's version as
    offers' digests are; 16 bytes, since a false match would hide 50 offers' changes."""
    return hashlib.blake2b(body, digest_size=16, person=_DIGEST_PERSON).digest()


def unchanged_page(mark: PageMark, body: bytes) -> Page[Any]:
    """A stand-in for a page whose bytes equal `mark`'s: its paging without decoding it."""
    return Page(
        [],
        mark.last_page,
        mark.has_next,
        mark.no_sku,
        mark.total,
        size=mark.size,
        current_page=mark.current_page,
        next_url=mark.next_url,
        digest=mark.digest,
        unchanged=mark,
        raw=body,
    )


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{where} is not an integer")
    if not -_MAX_INT <= value <= _MAX_INT:
        raise _Bad(f"{where} is out of range")
    return value


def _sku(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # EAN-like SKUs sometimes arrive as numbers
    if not isinstance(value, str):
        raise _Bad(".sku is not a string")
    return value.strip() or None


@dataclass(frozen=True, slots=True)
class _Envelope:
    data: list[Any]
    last: int | None
    has_next: bool
    total: int | None
    current: int | None
    next_url: bool


def _envelope(body: Any) -> _Envelope:
    try:
        return _checked_envelope(body)
    except _Bad as exc:
        raise MalformedPage(exc.text) from None


def _checked_envelope(body: Any) -> _Envelope:
    if not isinstance(body, dict):
        raise MalformedPage("the body is not a JSON object")
    data = body.get("data")
    if not isinstance(data, list):
        raise MalformedPage("`data` is missing or not a list")
    current = body.get("current_page")
    last = body.get("last_page")
    if last is not None:
        last = _int(last, "last_page")
    if current is not None:
        current = _int(current, "current_page")
    next_url = body.get("next_page_url")
    if next_url is not None and not isinstance(next_url, str):
        raise MalformedPage("next_page_url is not a string")
    has_next = current < last if last is not None and current is not None else next_url is not None
    total = body.get("total")
    if total is not None:
        total = _int(total, "total")
    return _Envelope(data, last, has_next, total, current, next_url is not None)


def _page(items: list[T], envelope: _Envelope, no_sku: int) -> Page[T]:
    return Page(
        items,
        envelope.last,
        envelope.has_next,
        no_sku,
        envelope.total,
        size=len(envelope.data),
        current_page=envelope.current,
        next_url=envelope.next_url,
    )


def _offers(data: list[Any], parse: Callable[[Any], T | None]) -> tuple[list[T], int]:
    """Each offer of a page parsed, and how many had no SKU; a malformed one fails the page."""
    parsed: list[T] = []
    no_sku = 0
    for index, item in enumerate(data):
        try:
            # A large page comes split (daemon/keycrm/page_split.py): each offer decoded only now.
            one = parse(item.decode() if isinstance(item, RawOffer) else item)
        except _Bad as exc:
            raise MalformedPage(f"data[{index}]{exc.text}") from None
        except NotJson:
            raise MalformedPage(f"data[{index}] is not JSON") from None
        if one is None:
            no_sku += 1
        else:
            parsed.append(one)
    return parsed, no_sku


def _object(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _Bad(" is not an object")
    return item


def _warehouse(raw: Any) -> WarehouseStock:
    w = _object(raw)
    return WarehouseStock(
        _int(w.get("id"), ".id"),
        _number(w.get("quantity"), ".quantity"),
        _number(w.get("reserve", 0), ".reserve"),
    )


def _stock_level(raw: Any) -> StockLevel | None:
    item = _object(raw)
    offer_id = _int(item.get("id"), ".id")
    sku = _sku(item.get("sku"))
    quantity = _number(item.get("quantity"), ".quantity")
    reserve = _number(item.get("reserve", 0), ".reserve")
    price = item.get("price")
    warehouses = None
    raw = item.get("warehouse")
    if raw is not None:
        if not isinstance(raw, list):
            raise _Bad(".warehouse is not a list")
        stocks = []
        for w_index, w in enumerate(raw):
            try:
                stocks.append(_warehouse(w))
            except _Bad as exc:
                raise _Bad(f".warehouse[{w_index}]{exc.text}") from None
        warehouses = tuple(sorted(stocks, key=lambda w: w.id))
    if sku is None:
        return None
    return StockLevel(
        sku=sku,
        offer_id=offer_id,
        quantity=quantity,
        reserve=reserve,
        price=None if price is None else _number(price, ".price"),
        warehouses=warehouses,
        digest=raw_digest(item),
    )


def parse_stock_page(body: Any) -> Page[StockLevel]:
    """A `/offers/stocks` page: `id, sku, price, quantity, reserve[, warehouse[]]` per offer."""
    envelope = _envelope(body)
    levels, no_sku = _offers(envelope.data, _stock_level)
    return _page(levels, envelope, no_sku)


def _catalog_entry(raw: Any) -> CatalogEntry | None:
    item = _object(raw)
    offer_id = _int(item.get("id"), ".id")
    sku = _sku(item.get("sku"))
    product = item.get("product")
    if product is not None and not isinstance(product, dict):
        raise _Bad(".product is not an object")
    name = None if product is None else product.get("name")
    if name is not None and not isinstance(name, str):
        raise _Bad(".product.name is not a string")
    product_id = item.get("product_id")
    if product_id is not None:
        product_id = _int(product_id, ".product_id")
    barcode = item.get("barcode")
    if isinstance(barcode, int) and not isinstance(barcode, bool):
        barcode = str(barcode)
    if barcode is not None and not isinstance(barcode, str):
        raise _Bad(".barcode is not a string")
    props = item.get("properties") or []
    if not isinstance(props, list):
        raise _Bad(".properties is not a list")
    properties = []
    for p_index, prop in enumerate(props):
        if not isinstance(prop, dict) or not isinstance(prop.get("name"), str):
            raise _Bad(f".properties[{p_index}] has no name")
        value = prop.get("value")
        properties.append((prop["name"], "" if value is None else str(value)))
    if sku is None:
        return None
    return CatalogEntry(
        sku=sku,
        offer_id=offer_id,
        product_id=product_id,
        product_name=name.strip() if isinstance(name, str) else None,
        barcode=barcode.strip() or None if isinstance(barcode, str) else None,
        properties=tuple(properties),
    )


def parse_catalog_page(body: Any) -> Page[CatalogEntry]:
    """An `/offers?include=product` page: barcode, properties and the product's name and id."""
    envelope = _envelope(body)
    entries, no_sku = _offers(envelope.data, _catalog_entry)
    return _page(entries, envelope, no_sku)


@dataclass(frozen=True, slots=True)
class ChangedOrder:
    """One order of the feed: when it last changed, the SKUs of its lines, and a version that
    tells this state of it from another (an order seen again with the same version is old news).
    """

    id: int
    updated_at: float  # Unix time; keyCRM writes UTC as `YYYY-MM-DD HH:MM:SS`
    skus: tuple[str, ...]
    version: str


def _utc(value: Any, where: str) -> float:
    if not isinstance(value, str) or len(value) > 40:
        raise _Bad(f"{where} is not a time")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _Bad(f"{where} is not a time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _line(raw: Any) -> tuple[str | None, Decimal | None]:
    """An order line's SKU and quantity. The offer's SKU is the one stock is kept under; a
    line without an offer (a custom item) names only the product's."""
    entry = _object(raw)
    offer = entry.get("offer")
    if offer is not None and not isinstance(offer, dict):
        raise _Bad(".offer is not an object")
    sku = _sku(offer.get("sku")) if offer else None
    quantity = entry.get("quantity")
    amount = None if quantity is None else _number(quantity, ".quantity")
    return sku or _sku(entry.get("sku")), amount


def _order(raw: Any) -> ChangedOrder:
    item = _object(raw)
    order_id = _int(item.get("id"), ".id")
    updated = item.get("updated_at")
    updated_at = _utc(updated, ".updated_at")
    products = item.get("products")
    if not isinstance(products, list):  # `include=products.offer` was not honoured
        raise _Bad(".products is missing or not a list")
    skus: list[str] = []
    lines: list[str] = []
    for index, line in enumerate(products):
        try:
            sku, quantity = _line(line)
        except _Bad as exc:
            raise _Bad(f".products[{index}]{exc.text}") from None
        if sku is not None:
            skus.append(sku)
        lines.append(f"{sku}\x1f{quantity}")
    status = item.get("status_id")
    text = "\x1e".join([str(updated), str(status), *sorted(lines)])
    version = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return ChangedOrder(order_id, updated_at, tuple(dict.fromkeys(skus)), version)


def parse_order_page(body: Any) -> Page[ChangedOrder]:
    """An `/order?include=products.offer` page: each order's id, `updated_at` and lines."""
    envelope = _envelope(body)
    orders, _ = _offers(envelope.data, _order)
    return _page(orders, envelope, 0)
