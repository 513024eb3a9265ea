"""keyCRM records to and from the compact JSON text the store keeps."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from daemon.core.models import CatalogEntry, StockLevel, WarehouseStock, plain

__all__ = ["decode_catalog", "decode_stock", "encode_catalog", "encode_stock"]


def _num(value: Decimal) -> str:
    return plain(value)


def encode_stock(level: StockLevel) -> str:
    """Canonical text: two equal levels encode to equal text, so the store compares strings."""
    data: dict[str, Any] = {
        "o": level.offer_id,
        "q": _num(level.quantity),
        "r": _num(level.reserve),
    }
    if level.price is not None:
        data["p"] = _num(level.price)
    if level.warehouses is not None:
        data["w"] = [[w.id, _num(w.quantity), _num(w.reserve)] for w in level.warehouses]
    return orjson.dumps(data).decode()


def decode_stock(sku: str, text: str) -> StockLevel:
    data = orjson.loads(text)
    warehouses = data.get("w")
    return StockLevel(
        sku=sku,
        offer_id=data["o"],
        quantity=Decimal(data["q"]),
        reserve=Decimal(data["r"]),
        price=None if data.get("p") is None else Decimal(data["p"]),
        warehouses=None
        if warehouses is None
        else tuple(WarehouseStock(w[0], Decimal(w[1]), Decimal(w[2])) for w in warehouses),
    )


def encode_catalog(entry: CatalogEntry) -> str:
    return orjson.dumps(
        {
            "o": entry.offer_id,
            "pi": entry.product_id,
            "n": entry.product_name,
            "b": entry.barcode,
            "pr": [list(p) for p in entry.properties],
        }
    ).decode()


def decode_catalog(sku: str, text: str) -> CatalogEntry:
    data = orjson.loads(text)
    return CatalogEntry(
        sku=sku,
        offer_id=data["o"],
        product_id=data.get("pi"),
        product_name=data.get("n"),
        barcode=data.get("b"),
        properties=tuple((p[0], p[1]) for p in data.get("pr", [])),
    )
