"""A fake Ordergroove `PATCH /products-batch/update/`, per developer.ordergroove.com.

Recomputes the HMAC of the `authorization` header (`sig_field|ts` with the hash key, Base64),
refuses a `ts` older than two hours or a missing `og-authorization: True`, or takes `x-api-key`.
Answers the reference shape `{"results": [...]}` (or, when told, the guide's list of result
objects) with 200 per updated product, 404 for unknown ones, 400 for a bad entry; a failure
inside the 200 (`faults.fail_in_body`, or `failing` for one product) is that product's 500,
unapplied.

Read-back: `GET /products/{product_id}/` answers the product (`live`, `discontinued`,
`last_update`, ...) or `404 {"detail": "Not found."}`. `edit_by_hand` flips a product's flag the
way a person in Ordergroove's admin would, so tests and the demo can create drift.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from daemon.simulator.faults import Faults

__all__ = ["FakeOrdergroove"]

MAX_AGE = 2 * 3600  # "the timestamp must be within the last 2 hours"
CLOCK_SKEW = 300  # a little of the future is tolerated, as servers usually do


class FakeOrdergroove:
    """The fake; `live` is product_id -> flag, `known` limits which products exist."""

    def __init__(
        self,
        hash_key: str,
        *,
        public_id: str = "39bkas893740ng49023u0m23049209n2",
        sig_field: str = "api_user",
    ) -> None:
        self.hash_key = hash_key
        self.public_id = public_id
        self.sig_field = sig_field
        self.api_key: str | None = None
        self.live: dict[str, bool] = {}
        self.known: set[str] | None = None
        #: products the API chokes on: a batch holding one is refused whole (400), unapplied
        self.poison: set[str] = set()
        #: products whose update fails inside the 200: their result says 500, nothing applied
        self.failing: set[str] = set()
        self.guide_shape = False
        self.requests: list[list[dict[str, Any]]] = []
        self.timestamps: list[int] = []
        self.faults = Faults()
        self.on_update: Callable[[str, bool], None] | None = None
        #: monotonic times of read-back requests
        self.reads: list[float] = []

    def edit_by_hand(self, product: str, live: bool) -> None:
        """Set a product's `live` flag without the API, as a person in the admin would."""
        self.live[product] = live

    def _authorized(self, request: web.Request) -> str | None:
        """None when the request may pass, else why not."""
        if self.api_key is not None and request.headers.get("x-api-key") == self.api_key:
            return None
        raw = request.headers.get("authorization")
        if raw is None:
            return "missing authorization"
        if request.headers.get("og-authorization") != "True":
            return "og-authorization must be True"
        try:
            auth = orjson.loads(raw)
            ts = int(auth["ts"])
            public_id, sig_field, sig = auth["public_id"], auth["sig_field"], auth["sig"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return "malformed authorization"
        expected = base64.b64encode(
            hmac.new(self.hash_key.encode(), f"{sig_field}|{ts}".encode(), hashlib.sha256).digest()
        ).decode()
        if public_id != self.public_id or sig_field != self.sig_field:
            return "unknown merchant or user"
        if not hmac.compare_digest(sig, expected):
            return "signature mismatch"
        if not -CLOCK_SKEW <= time.time() - ts <= MAX_AGE:
            return "signature expired"
        self.timestamps.append(ts)
        return None

    async def update(self, request: web.Request) -> web.Response:
        problem = self._authorized(request)
        if problem is not None:
            return web.json_response({"detail": f"Authentication failed: {problem}"}, status=403)
        fault = await self.faults.answer()
        if fault is not None:
            return fault
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"detail": "JSON parse error"}, status=400)
        if not isinstance(body, list):
            return web.json_response({"detail": "Expected a list of items"}, status=400)
        self.requests.append(body)
        bad = [e.get("product_id") for e in body if isinstance(e, dict)]
        if self.poison.intersection(p for p in bad if isinstance(p, str)):
            return web.json_response({"detail": "Invalid product data in batch"}, status=400)
        results = []
        failure = self.faults.body_failure()
        for entry in body:
            product = entry.get("product_id") if isinstance(entry, dict) else None
            live = entry.get("live") if isinstance(entry, dict) else None
            if failure is not None or product in self.failing:
                results.append({"product_id": str(product), "status": 500})
            elif not isinstance(product, str) or not isinstance(live, bool):
                results.append({"product_id": str(product), "status": 400})
            elif self.known is not None and product not in self.known:
                results.append({"product_id": product, "status": 404})
            else:
                self.live[product] = live
                if self.on_update is not None:
                    self.on_update(product, live)
                results.append({"product_id": product, "status": 200})
        if self.guide_shape:
            return web.Response(
                body=orjson.dumps([{"results": [r]} for r in results]),
                content_type="application/json",
            )
        return web.json_response({"results": results})

    async def product(self, request: web.Request) -> web.Response:
        problem = self._authorized(request)
        if problem is not None:
            return web.json_response({"detail": f"Authentication failed: {problem}"}, status=403)
        fault = await self.faults.answer()
        if fault is not None:
            return fault
        self.reads.append(time.monotonic())
        product = request.match_info["product"]
        live = self.live.get(product)
        if live is None and (self.known is None or product not in self.known):
            return web.json_response({"detail": "Not found."}, status=404)
        return web.json_response(
            {
                "merchant": self.public_id,
                "name": f"Product {product}",
                "external_product_id": product,
                "sku": product,
                "price": "10.00",
                "live": bool(live),
                "discontinued": False,
                "autoship_enabled": True,
                "created": "2026-01-01 00:00:00",
                "last_update": "2026-01-01 00:00:00",
                "product_type": "standard",
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_patch("/products-batch/update/", self.update)
        app.router.add_get("/products/{product}/", self.product)
        return app
