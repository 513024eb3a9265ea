"""keyCRM response bodies to records, strictly: a page is used whole or not at all.

A malformed page raises `MalformedPage` (a retryable source error): the client counts it, logs
it and asks again; nothing of it reaches the store. Offers without a SKU are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

from daemon.errors import SourceRetryable
from daemon.models import CatalogEntry, StockLevel, WarehouseStock

__all__ = ["MalformedPage", "Page", "parse_catalog_page", "parse_stock_page"]


class MalformedPage(SourceRetryable):
    """keyCRM answered 200 with a body that is not what its API promises."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status="malformed")


T = TypeVar("T")


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


#: No stock or price is near this; `1e999999999` in a page would otherwise cost a billion digits.
MAX_NUMBER = Decimal(10) ** 15
_PLACES = Decimal(10) ** -12  # finer than any stock or price; keeps every number 28 digits
#: keyCRM's ids and page numbers are 64-bit integers; the store keeps them as such.
_MAX_INT = 2**63 - 1


def _number(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedPage(f"{where} is not a number")
    try:
        number = Decimal(str(value).strip()) if len(str(value)) <= 100 else Decimal("NaN")
    except InvalidOperation as exc:
        raise MalformedPage(f"{where} is not a number") from exc
    if not number.is_finite():
        raise MalformedPage(f"{where} is not a finite number")
    if number and number.adjusted() >= 15:  # compares exponents: abs() itself could overflow
        raise MalformedPage(f"{where} is out of range")
    if number.as_tuple().exponent < -12:  # type: ignore[operator] # finite: an int
        number = number.quantize(_PLACES)
    return number


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedPage(f"{where} is not an integer")
    if not -_MAX_INT <= value <= _MAX_INT:
        raise MalformedPage(f"{where} is out of range")
    return value


def _sku(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # EAN-like SKUs sometimes arrive as numbers
    if not isinstance(value, str):
        raise MalformedPage(f"{where}.sku is not a string")
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


def parse_stock_page(body: Any) -> Page[StockLevel]:
    """A `/offers/stocks` page: `id, sku, price, quantity, reserve[, warehouse[]]` per offer."""
    envelope = _envelope(body)
    data = envelope.data
    levels: list[StockLevel] = []
    no_sku = 0
    for index, item in enumerate(data):
        where = f"data[{index}]"
        if not isinstance(item, dict):
            raise MalformedPage(f"{where} is not an object")
        offer_id = _int(item.get("id"), f"{where}.id")
        sku = _sku(item.get("sku"), where)
        quantity = _number(item.get("quantity"), f"{where}.quantity")
        reserve = _number(item.get("reserve", 0), f"{where}.reserve")
        price = item.get("price")
        warehouses = None
        raw = item.get("warehouse")
        if raw is not None:
            if not isinstance(raw, list):
                raise MalformedPage(f"{where}.warehouse is not a list")
            stocks = []
            for w_index, w in enumerate(raw):
                w_where = f"{where}.warehouse[{w_index}]"
                if not isinstance(w, dict):
                    raise MalformedPage(f"{w_where} is not an object")
                stocks.append(
                    WarehouseStock(
                        _int(w.get("id"), f"{w_where}.id"),
                        _number(w.get("quantity"), f"{w_where}.quantity"),
                        _number(w.get("reserve", 0), f"{w_where}.reserve"),
                    )
                )
            warehouses = tuple(sorted(stocks, key=lambda w: w.id))
        if sku is None:
            no_sku += 1
            continue
        levels.append(
            StockLevel(
                sku=sku,
                offer_id=offer_id,
                quantity=quantity,
                reserve=reserve,
                price=None if price is None else _number(price, f"{where}.price"),
                warehouses=warehouses,
            )
        )
    return _page(levels, envelope, no_sku)


def parse_catalog_page(body: Any) -> Page[CatalogEntry]:
    """An `/offers?include=product` page: barcode, properties and the product's name and id."""
    envelope = _envelope(body)
    data = envelope.data
    entries: list[CatalogEntry] = []
    no_sku = 0
    for index, item in enumerate(data):
        where = f"data[{index}]"
        if not isinstance(item, dict):
            raise MalformedPage(f"{where} is not an object")
        offer_id = _int(item.get("id"), f"{where}.id")
        sku = _sku(item.get("sku"), where)
        product = item.get("product")
        if product is not None and not isinstance(product, dict):
            raise MalformedPage(f"{where}.product is not an object")
        name = None if product is None else product.get("name")
        if name is not None and not isinstance(name, str):
            raise MalformedPage(f"{where}.product.name is not a string")
        product_id = item.get("product_id")
        if product_id is not None:
            product_id = _int(product_id, f"{where}.product_id")
        barcode = item.get("barcode")
        if isinstance(barcode, int) and not isinstance(barcode, bool):
            barcode = str(barcode)
        if barcode is not None and not isinstance(barcode, str):
            raise MalformedPage(f"{where}.barcode is not a string")
        props = item.get("properties") or []
        if not isinstance(props, list):
            raise MalformedPage(f"{where}.properties is not a list")
        properties = []
        for p_index, prop in enumerate(props):
            if not isinstance(prop, dict) or not isinstance(prop.get("name"), str):
                raise MalformedPage(f"{where}.properties[{p_index}] has no name")
            value = prop.get("value")
            properties.append((prop["name"], "" if value is None else str(value)))
        if sku is None:
            no_sku += 1
            continue
        entries.append(
            CatalogEntry(
                sku=sku,
                offer_id=offer_id,
                product_id=product_id,
                product_name=name.strip() if isinstance(name, str) else None,
                barcode=barcode.strip() or None if isinstance(barcode, str) else None,
                properties=tuple(properties),
            )
        )
    return _page(entries, envelope, no_sku)
