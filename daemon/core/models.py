"""The values that flow through the pipeline: immutable, slotted, cheap to compare."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from decimal import Decimal

import orjson

__all__ = [
    "CatalogEntry",
    "ItemValue",
    "Outcome",
    "PushResult",
    "StockLevel",
    "StockRecord",
    "Value",
    "Verdict",
    "WarehouseStock",
    "join_key",
    "plain",
    "split_key",
]


def plain(number: Decimal) -> str:
    """A decimal as people write it: `100`, `9.5`, never `1E+2` or `9.50`."""
    normal = number.normalize()
    text = format(normal, "f")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True, slots=True)
class WarehouseStock:
    """One warehouse's share of an offer's stock, as keyCRM reports it with `filter[details]`."""

    id: int
    quantity: Decimal
    reserve: Decimal


@dataclass(frozen=True, slots=True)
class StockLevel:
    """The stock half of a record: what `/offers/stocks` (or a look-up) says about one SKU."""

    sku: str
    offer_id: int
    quantity: Decimal
    reserve: Decimal
    price: Decimal | None
    warehouses: tuple[WarehouseStock, ...] | None = None
    #: `raw_digest` of the offer this level was parsed from (None: not from a keyCRM page).
    #: Not part of the value: two equal levels are equal whatever bytes they came from.
    digest: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """The catalog half of a record: what `/offers?include=product` says about one SKU."""

    sku: str
    offer_id: int
    product_id: int | None = None
    product_name: str | None = None
    barcode: str | None = None
    properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StockRecord:
    """Everything keyCRM told us about one SKU: its stock, and its catalog fields when known."""

    stock: StockLevel
    catalog: CatalogEntry | None = None

    @property
    def sku(self) -> str:
        return self.stock.sku

    def field(self, name: str) -> str | None:
        """The text of one key-template field, or None when keyCRM has no value for it."""
        cat = self.catalog
        if name == "sku":
            return self.stock.sku
        if name == "offer_id":
            return str(self.stock.offer_id)
        if cat is None:
            return None
        if name == "barcode":
            return cat.barcode
        if name == "product_name":
            return cat.product_name
        if name == "product_id":
            return None if cat.product_id is None else str(cat.product_id)
        if name.startswith("prop[") and name.endswith("]"):
            wanted = name[5:-1]
            return next((value for key, value in cat.properties if key == wanted), None)
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Value:
    """What a channel should hold for one item. Only the parts the channel takes are set."""

    quantity: int | None = None
    price: Decimal | None = None
    live: bool | None = None

    def encode(self) -> str:
        """Canonical text form: equal values encode equally, so the store compares text."""
        parts: dict[str, object] = {}
        if self.quantity is not None:
            parts["q"] = self.quantity
        if self.price is not None:
            parts["p"] = plain(self.price)
        if self.live is not None:
            parts["l"] = self.live
        return orjson.dumps(parts, option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def decode(cls, text: str) -> Value:
        """The value of an `encode` text (values are immutable: the same text gives the same
        object from a small cache, as the store decodes every item it hands out)."""
        if cls is Value:
            return _decode(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> Value:
        parts = orjson.loads(text)
        price = parts.get("p")
        return cls(
            quantity=parts.get("q"),
            price=None if price is None else Decimal(price),
            live=parts.get("l"),
        )

    @property
    def is_positive(self) -> bool:
        """Whether the channel would show this item as in stock."""
        return bool(self.live) or (self.quantity is not None and self.quantity > 0)

    @staticmethod
    def encoded_is_positive(text: str) -> bool:
        """`decode(text).is_positive` without building the value (nor parsing its price): the
        store asks it of every value it acknowledges, to keep its in-stock counts."""
        parts = orjson.loads(text)
        quantity = parts.get("q")
        return bool(parts.get("l")) or (quantity is not None and quantity > 0)

    def describe(self) -> str:
        """Short human form for logs, --dry-run and history: `qty=3 price=9.5`."""
        bits = []
        if self.quantity is not None:
            bits.append(f"qty={self.quantity}")
        if self.price is not None:
            bits.append(f"price={plain(self.price)}")
        if self.live is not None:
            bits.append(f"live={str(self.live).lower()}")
        return " ".join(bits) or "-"


@functools.lru_cache(maxsize=4096)
def _decode(text: str) -> Value:
    return Value._parse(text)


@dataclass(frozen=True, slots=True)
class ItemValue:
    """One item of one channel with the value to push. `key` is what the store knows it by."""

    key: str
    value: Value

    @property
    def parts(self) -> tuple[str, ...]:
        """The key's components (e.g. UPC and store code), as the adapter needs them."""
        return split_key(self.key)


class Outcome(enum.StrEnum):
    """What happened to one item of a push."""

    ACKNOWLEDGED = "ok"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class PushResult:
    """The channel's answer for one item."""

    key: str
    outcome: Outcome
    reason: str | None = None
    retry_after: float | None = field(default=None)


def join_key(parts: tuple[str, ...]) -> str:
    """One part is the key itself; several become a JSON array, which no part can break."""
    if len(parts) == 1:
        return parts[0]
    return orjson.dumps(list(parts)).decode()


def split_key(key: str) -> tuple[str, ...]:
    """Inverse of `join_key`."""
    if key.startswith('["'):
        try:
            parts = orjson.loads(key)
        except orjson.JSONDecodeError:
            return (key,)
        if isinstance(parts, list) and all(isinstance(p, str) for p in parts):
            return tuple(parts)
    return (key,)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one push for one item, as the dispatcher decided it."""

    key: str
    sent: Value
    outcome: Outcome
    error: str | None = None
    retry_after: float | None = None
