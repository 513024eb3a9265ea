"""The fake keyCRM's orders: `GET /order` as keycrm-openapi.yml describes it, and a shop floor.

An order placed here (`OrderBook.place`) writes its lines off the offers' stock, as a sale does
in keyCRM, and is listed by `/order?filter[updated_between]=FROM, TO` (UTC, `YYYY-MM-DD
HH:MM:SS`, both ends included, whole seconds as keyCRM keeps them) with its lines and their
offers under `include=products.offer`. `refusal` makes the route answer 401, 403 or 404, as a key
without order access or a keyCRM without the route would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.simulator.keycrm import FakeOffer

__all__ = ["FakeOrder", "OrderBook", "parse_between"]

_FORMAT = "%Y-%m-%d %H:%M:%S"
_REFUSALS = {
    401: "Unauthenticated.",
    403: "This action is unauthorized.",
    404: "Not Found.",
}


def _utc(unix: float) -> str:
    return datetime.fromtimestamp(int(unix), UTC).strftime(_FORMAT)


def parse_between(value: str) -> tuple[float, float] | None:
    """`FROM, TO` as keyCRM's date filters take it, in Unix seconds; None if malformed."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2:
        return None
    try:
        since, until = (datetime.strptime(p, _FORMAT).replace(tzinfo=UTC) for p in parts)
    except ValueError:
        return None
    return since.timestamp(), until.timestamp()


@dataclass(slots=True)
class FakeOrder:
    """One order: its lines (offer, quantity) and when it was created and last changed."""

    id: int
    lines: list[tuple[FakeOffer, float]]
    created_at: float
    updated_at: float
    status_id: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


class OrderBook:
    """The orders of the fake keyCRM, by id."""

    def __init__(self) -> None:
        self.orders: dict[int, FakeOrder] = {}
        self._next = 1
        #: answer `/order` with this status (401, 403, 404) instead of orders
        self.refusal: int | None = None

    def place(self, lines: list[tuple[FakeOffer, float]], *, at: float | None = None) -> FakeOrder:
        """A sale: each line's quantity leaves its offer's first warehouse."""
        now = time.time() if at is None else at
        for offer, quantity in lines:
            warehouse = next(iter(offer.stock), 1)
            left, reserve = offer.stock.get(warehouse, (0.0, 0.0))
            offer.stock[warehouse] = (max(0.0, left - quantity), reserve)
        order = FakeOrder(self._next, list(lines), now, now)
        self.orders[order.id] = order
        self._next += 1
        return order

    def touch(
        self, order_id: int, *, status_id: int | None = None, at: float | None = None
    ) -> None:
        """The order changed (a status, a comment): a new `updated_at`."""
        order = self.orders[order_id]
        order.updated_at = time.time() if at is None else at
        if status_id is not None:
            order.status_id = status_id

    def refused(self) -> tuple[int, dict[str, str]] | None:
        if self.refusal is None:
            return None
        return self.refusal, {"message": _REFUSALS.get(self.refusal, "Error.")}

    def changed(self, since: float, until: float, *, descending: bool = False) -> list[FakeOrder]:
        """Orders whose `updated_at` (whole seconds) lies in [since, until], by id."""
        found = [o for o in self.orders.values() if since <= int(o.updated_at) <= until]
        return sorted(found, key=lambda o: o.id, reverse=descending)

    @staticmethod
    def row(order: FakeOrder, *, lines: bool) -> dict[str, Any]:
        """An order as `OrderWithIncludes`: with `products` (each with its `offer`) if asked."""
        total = sum(offer.price * quantity for offer, quantity in order.lines)
        row: dict[str, Any] = {
            "id": order.id,
            "parent_id": None,
            "source_uuid": None,
            "source_id": 1,
            "status_id": order.status_id,
            "status_group_id": 1,
            "grand_total": total,
            "total_discount": 0,
            "payment_status": "not_paid",
            "created_at": _utc(order.created_at),
            "ordered_at": _utc(order.created_at),
            "updated_at": _utc(order.updated_at),
            "closed_at": None,
        }
        if lines:
            row["products"] = [_line(offer, quantity) for offer, quantity in order.lines]
        return row


def _line(offer: FakeOffer, quantity: float) -> dict[str, Any]:
    properties = [{"name": k, "value": v} for k, v in offer.properties.items()]
    return {
        "name": offer.product_name,
        "sku": offer.sku,
        "price": offer.price,
        "price_sold": offer.price,
        "purchased_price": round(offer.price / 2, 2),
        "quantity": quantity,
        "unit_type": None,
        "upsale": False,
        "comment": None,
        "picture": None,
        "properties": properties,
        "shipment_type": "warehouse",
        "offer": {
            "id": offer.id,
            "product_id": offer.product_id,
            "sku": offer.sku,
            "barcode": offer.barcode,
            "price": offer.price,
            "purchased_price": round(offer.price / 2, 2),
            "quantity": offer.quantity,
            "properties": properties,
        },
    }
