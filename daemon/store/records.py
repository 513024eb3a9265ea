"""keyCRM records as both backends store them: one canonical text each for stock and catalog.

Shared by the backends so that a record reads back, and vanishes, the same way in each.
"""

from __future__ import annotations

from decimal import Decimal

from daemon.core.models import StockLevel, StockRecord
from daemon.store.codec import decode_catalog, decode_stock

__all__ = ["record_from", "zeroed"]


def record_from(sku: str, stock: str | None, catalog: str | None) -> StockRecord | None:
    """The record behind a stored row; None while keyCRM has reported no stock for the SKU."""
    if stock is None:
        return None
    return StockRecord(
        decode_stock(sku, stock), None if catalog is None else decode_catalog(sku, catalog)
    )


def zeroed(record: StockRecord) -> StockRecord | None:
    """The record of a SKU that left keyCRM: no stock anywhere (None if it had none already)."""
    level = record.stock
    if level.quantity == 0 and level.reserve == 0:
        return None
    empty = Decimal(0)
    zero = StockLevel(
        sku=level.sku,
        offer_id=level.offer_id,
        quantity=empty,
        reserve=empty,
        price=level.price,
        warehouses=None
        if level.warehouses is None
        else tuple(type(w)(w.id, empty, empty) for w in level.warehouses),
    )
    return StockRecord(zero, record.catalog)
