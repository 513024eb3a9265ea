"""A fake keyCRM OpenAPI: `/offers/stocks`, `/offers` and `/order`, as keycrm-openapi.yml
describes them (the orders and the sales that move stock: `daemon.simulator.orders`).

Checks the Bearer key, `limit` (1..50, default 15), `page`, the deep-object filters; answers with
the Laravel-style paginated envelope (whose `next_page_url` carries only `?page=N`, as the live
API's does); enforces a sliding-window request limit with `429 Too Many Attempts.` and
Retry-After. Records every request so tests can check the budget was kept.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from aiohttp import web

from daemon.simulator.faults import Faults
from daemon.simulator.orders import OrderBook, parse_between

__all__ = ["FakeKeycrm", "FakeOffer"]


@dataclass(slots=True)
class FakeOffer:
    """One keyCRM offer (product variant) with its stock per warehouse."""

    id: int
    sku: str | None
    product_id: int
    product_name: str
    price: float = 100.0
    barcode: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    stock: dict[int, tuple[float, float]] = field(default_factory=lambda: {1: (0.0, 0.0)})

    @property
    def quantity(self) -> float:
        return sum(q for q, _ in self.stock.values())

    @property
    def reserve(self) -> float:
        return sum(r for _, r in self.stock.values())


class _Offers(dict[int, FakeOffer]):
    """Offers by id, with their id order kept between changes: a page of a big catalog then
    costs its own rows, not a sort of the whole catalog (the bench pages through a million)."""

    def __init__(self) -> None:
        super().__init__()
        self._ordered: list[FakeOffer] | None = None

    def ordered(self) -> list[FakeOffer]:
        if self._ordered is None:
            self._ordered = sorted(self.values(), key=lambda o: o.id)
        return self._ordered

    def __setitem__(self, key: int, value: FakeOffer) -> None:
        self._ordered = None
        super().__setitem__(key, value)

    def __delitem__(self, key: int) -> None:
        self._ordered = None
        super().__delitem__(key)

    def pop(self, key: int, *default: Any) -> Any:
        self._ordered = None
        return super().pop(key, *default)

    def popitem(self) -> tuple[int, FakeOffer]:
        self._ordered = None
        return super().popitem()

    def clear(self) -> None:
        self._ordered = None
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._ordered = None
        super().update(*args, **kwargs)

    def setdefault(self, key: int, default: Any = None) -> Any:
        self._ordered = None
        return super().setdefault(key, default)


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


class FakeKeycrm:
    """The fake server's state and routes. Mount `app()` under any base URL ending in `/v1`."""

    def __init__(
        self,
        api_key: str,
        *,
        limit: int | None = None,
        window: float = 60.0,
        warehouse_names: dict[int, str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.offers = _Offers()
        self.limit = limit
        self.window = window
        self.warehouse_names = warehouse_names or {1: "Основний", 2: "Магазин"}
        self.faults = Faults()
        self.orders = OrderBook()
        self.requests: list[tuple[float, str, dict[str, str]]] = []
        self.refused = 0
        self._recent: deque[float] = deque()
        #: request lines longer than this are refused with 414, as front ends do (nginx: 8 KiB)
        self.max_url_length = 8190
        #: SKUs whose presence in a filter makes keyCRM answer 400 (a value it chokes on)
        self.refuse_skus: set[str] = set()
        #: paging that lies: "last_page_1" (page 1 claims to be the last), "short_page_2"
        #: (page 2 comes back short), "total_drift" (total grows by one on every page)
        self.paging_lie: str | None = None
        #: page number -> seconds the full scan's answer for that page takes (look-ups unaffected)
        self.page_delay: dict[int, float] = {}
        #: while set, the full scan's pages wait for it (look-ups unaffected)
        self.scan_gate: anyio.Event | None = None
        #: while set, look-ups (`filter[offers_sku]`) wait for it (the scan unaffected)
        self.lookup_gate: anyio.Event | None = None

    # --- state -----------------------------------------------------------------------------------

    def add(self, offer: FakeOffer) -> FakeOffer:
        self.offers[offer.id] = offer
        return offer

    def by_sku(self, sku: str) -> FakeOffer:
        return next(o for o in self.offers.values() if o.sku == sku)

    def set_stock(
        self, sku: str, quantity: float, reserve: float = 0.0, *, warehouse: int | None = None
    ) -> None:
        offer = self.by_sku(sku)
        if warehouse is None:
            offer.stock = {next(iter(offer.stock), 1): (quantity, reserve)}
        else:
            offer.stock[warehouse] = (quantity, reserve)

    def populate(self, count: int, *, seed: int = 7, warehouses: tuple[int, ...] = (1,)) -> None:
        """`count` offers `SKU-00001`... with barcodes, sizes and a few variants per product."""
        rng = random.Random(seed)
        for index in range(1, count + 1):
            product = (index + 2) // 3
            self.add(
                FakeOffer(
                    id=1000 + index,
                    sku=f"SKU-{index:05d}",
                    product_id=product,
                    product_name=f"Product {product}",
                    price=float(rng.randint(5, 500)),
                    barcode=f"{400000000000 + index}",
                    properties={"Size": str(36 + index % 8), "Width": "D"},
                    stock={
                        w: (float(rng.randint(0, 40)), float(rng.randint(0, 2))) for w in warehouses
                    },
                )
            )

    # --- HTTP ------------------------------------------------------------------------------------

    def _rate_limited(self) -> web.Response | None:
        if self.limit is None:
            return None
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - self.window:
            self._recent.popleft()
        if len(self._recent) >= self.limit:
            self.refused += 1
            retry = max(1, math.ceil(self._recent[0] + self.window - now))
            return web.json_response(
                {"message": "Too Many Attempts."},
                status=429,
                headers={
                    "Retry-After": str(retry),
                    "X-RateLimit-Limit": str(self.limit),
                    "X-RateLimit-Remaining": "0",
                },
            )
        self._recent.append(now)
        return None

    async def _guard(self, request: web.Request) -> web.Response | None:
        self.requests.append((time.monotonic(), request.path, dict(request.query)))
        if len(str(request.rel_url)) > self.max_url_length:
            return web.Response(status=414, text="414 Request-URI Too Large")
        skus = request.query.get("filter[offers_sku]", "").split(",")
        if self.refuse_skus.intersection(skus):
            return web.json_response({"message": "Bad request."}, status=400)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"message": "Unauthenticated."}, status=401)
        limited = self._rate_limited()
        if limited is not None:
            return limited
        return await self.faults.answer()

    @staticmethod
    def _paging(request: web.Request) -> tuple[int, int] | web.Response:
        errors: dict[str, list[str]] = {}
        try:
            limit = int(request.query.get("limit", "15"))
            if not 1 <= limit <= 50:
                errors["limit"] = ["The limit must be between 1 and 50."]
        except ValueError:
            errors["limit"] = ["The limit must be an integer."]
            limit = 15
        try:
            page = int(request.query.get("page", "1"))
            if page < 1:
                errors["page"] = ["The page must be at least 1."]
        except ValueError:
            errors["page"] = ["The page must be an integer."]
            page = 1
        if errors:
            return web.json_response(
                {"message": "The given data was invalid.", "errors": errors}, status=422
            )
        return limit, page

    @staticmethod
    def _page(offers: list[FakeOffer], limit: int, page: int) -> list[FakeOffer]:
        return offers[(page - 1) * limit : page * limit]

    def _envelope(
        self, request: web.Request, total: int, rows: list[Any], limit: int, page: int
    ) -> web.Response:
        last = max(1, math.ceil(total / limit))
        base = f"{request.url.origin()}{request.path}"
        data = rows
        if self.paging_lie == "last_page_1":
            last = 1
        elif self.paging_lie == "short_page_2" and page == 2:
            data = data[: limit // 2]
        elif self.paging_lie == "total_drift":
            total += page - 1
        body = {
            "total": total,
            "current_page": page,
            "per_page": limit,
            "last_page": last,
            "data": data,
            "first_page_url": f"{base}?page=1",
            "last_page_url": f"{base}?page={last}",
            "next_page_url": f"{base}?page={page + 1}" if page < last else None,
            "prev_page_url": f"{base}?page={page - 1}" if page > 1 else None,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _filtered(self, request: web.Request, id_key: str, sku_key: str) -> list[FakeOffer]:
        offers = self.offers.ordered()
        ids = request.query.get(id_key)
        if ids:
            wanted_ids = {int(i) for i in ids.split(",") if i.strip().isdigit()}
            offers = [o for o in offers if o.id in wanted_ids]
        skus = request.query.get(sku_key)
        if skus:
            wanted_skus = {s.strip() for s in skus.split(",")}
            offers = [o for o in offers if o.sku in wanted_skus]
        return offers

    async def stocks(self, request: web.Request) -> web.Response:
        refusal = await self._guard(request)
        if refusal is not None:
            return refusal
        paging = self._paging(request)
        if isinstance(paging, web.Response):
            return paging
        if "filter[offers_sku]" not in request.query:
            if self.scan_gate is not None:
                await self.scan_gate.wait()
            await anyio.sleep(self.page_delay.get(paging[1], 0.0))
        elif self.lookup_gate is not None:
            await self.lookup_gate.wait()
        details = request.query.get("filter[details]", "false").lower() in ("true", "1")
        offers = self._filtered(request, "filter[offers_id]", "filter[offers_sku]")
        rows = []
        for offer in self._page(offers, *paging):
            row: dict[str, Any] = {
                "id": offer.id,
                "sku": offer.sku,
                "price": _num(offer.price),
                "purchased_price": _num(round(offer.price / 2, 2)),
                "quantity": _num(offer.quantity),
                "reserve": _num(offer.reserve),
            }
            if details:
                row["warehouse"] = [
                    {
                        "id": wid,
                        "name": self.warehouse_names.get(wid, f"Склад {wid}"),
                        "quantity": _num(q),
                        "reserve": _num(r),
                    }
                    for wid, (q, r) in sorted(offer.stock.items())
                ]
            rows.append(row)
        return self._envelope(request, len(offers), rows, *paging)

    async def offers_list(self, request: web.Request) -> web.Response:
        refusal = await self._guard(request)
        if refusal is not None:
            return refusal
        paging = self._paging(request)
        if isinstance(paging, web.Response):
            return paging
        include = request.query.get("include", "")
        offers = self._filtered(request, "filter[id]", "filter[sku]")
        rows = []
        for offer in self._page(offers, *paging):
            row: dict[str, Any] = {
                "id": offer.id,
                "product_id": offer.product_id,
                "sku": offer.sku,
                "barcode": offer.barcode,
                "thumbnail_url": None,
                "price": _num(offer.price),
                "purchased_price": _num(round(offer.price / 2, 2)),
                "quantity": _num(offer.quantity),
                "in_reserve": _num(offer.reserve),  # live name; the spec says `reserve`
                "weight": None,
                "length": None,
                "width": None,
                "height": None,
                "properties": [{"name": k, "value": v} for k, v in offer.properties.items()],
            }
            if "product" in include.split(","):
                row["product"] = {
                    "id": offer.product_id,
                    "name": offer.product_name,
                    "description": None,
                    "currency_code": "UAH",
                    "has_offers": True,
                    "is_archived": False,
                    "created_at": "2024-01-10 09:00:00",
                    "updated_at": "2024-03-01 12:00:00",
                }
            rows.append(row)
        return self._envelope(request, len(offers), rows, *paging)

    async def order_list(self, request: web.Request) -> web.Response:
        """`GET /order`: by `filter[updated_between]`, `sort` (`id`, `-id`), with the lines'
        offers under `include=products.offer`."""
        refusal = await self._guard(request)
        if refusal is not None:
            return refusal
        refused = self.orders.refused()
        if refused is not None:
            return web.json_response(refused[1], status=refused[0])
        paging = self._paging(request)
        if isinstance(paging, web.Response):
            return paging
        between = request.query.get("filter[updated_between]")
        window = (0.0, math.inf) if between is None else parse_between(between)
        if window is None:
            errors = {"filter.updated_between": ["The date range is invalid."]}
            return web.json_response(
                {"message": "The given data was invalid.", "errors": errors}, status=422
            )
        sort = request.query.get("sort", "id")
        orders = self.orders.changed(*window, descending=sort == "-id")
        lines = "products.offer" in request.query.get("include", "").split(",")
        start = (paging[1] - 1) * paging[0]
        rows = [self.orders.row(o, lines=lines) for o in orders[start : start + paging[0]]]
        return self._envelope(request, len(orders), rows, *paging)

    def app(self) -> web.Application:
        """Routes under `/v1`, like `https://openapi.keycrm.app/v1`."""
        app = web.Application()
        app.router.add_get("/v1/order", self.order_list)
        app.router.add_get("/v1/offers/stocks", self.stocks)
        app.router.add_get("/v1/offers", self.offers_list)
        return app
