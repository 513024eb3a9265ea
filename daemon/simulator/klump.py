"""A fake Klump Commerce inventory API: `PATCH /v1/products/update-webhook`, per docs.useklump.com.

Checks `klump-secret-key` (401), requires `name` (400 "error code and a message"), matches the
product by name (404 when the merchant has no such product), and answers 200 with the product
object as the docs' sample shows it (prices as strings).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from daemon.simulator.faults import Faults

__all__ = ["FakeKlump"]


class FakeKlump:
    """The fake; `products` is name -> {"quantity", "price"}, `known` limits which names exist."""

    def __init__(self, secret_key: str) -> None:
        self.secret_key = secret_key
        self.products: dict[str, dict[str, Any]] = {}
        self.known: set[str] | None = None
        self.requests: list[dict[str, Any]] = []
        self.faults = Faults()
        self.merchant_id = str(uuid.uuid4())
        self.on_update: Callable[[dict[str, Any]], None] | None = None

    async def update(self, request: web.Request) -> web.Response:
        if request.headers.get("klump-secret-key") != self.secret_key:
            return web.json_response(
                {"status": "error", "message": "Invalid API key provided"}, status=401
            )
        fault = await self.faults.answer()
        if fault is not None:
            return fault
        failure = self.faults.body_failure()
        if failure is not None:  # "an error code and a message", under a 200
            return web.json_response({"status": "error", "message": failure})
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"status": "error", "message": "Invalid JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"status": "error", "message": "Invalid body"}, status=400)
        self.requests.append(body)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return web.json_response(
                {"status": "error", "message": "name is a required field"}, status=400
            )
        quantity = body.get("quantity")
        if quantity is not None and (not isinstance(quantity, int) or quantity < 0):
            return web.json_response(
                {"status": "error", "message": "quantity must be a positive integer"}, status=400
            )
        if self.known is not None and name not in self.known:
            return web.json_response(
                {"status": "error", "message": f"Product '{name}' not found"}, status=404
            )
        product = self.products.setdefault(name, {"quantity": 0, "price": None})
        if quantity is not None:
            product["quantity"] = quantity
        if "price" in body:
            product["price"] = body["price"]
        if self.on_update is not None:
            self.on_update(body)
        return web.json_response(
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                "merchant_id": self.merchant_id,
                "name": name,
                "slug": name.lower().replace(" ", "-"),
                "quantity": product["quantity"],
                "price": None if product["price"] is None else f"{product['price']:.2f}",
                "is_published": True,
                "is_deleted": False,
                "updated_at": "2026-01-01T00:00:00.000Z",
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_patch("/v1/products/update-webhook", self.update)
        return app
