"""A fake Inventory Update API (`POST /api/product/inventory`), per the vendor's help page.

Checks the Bearer token and the required fields (`store`, `quantity`, and `upc` or all of `sku`,
`size`, `width`), answering `{"error": "Missing required field: sku"}`-style bodies; unknown
products are a 404. `faults.fail_in_body` answers `200 {"success": false, "error": ...}`, as a
real one did with "database is locked". Keeps what it was told per product and store, and every
request in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson
from aiohttp import web

from daemon.simulator.faults import Faults

__all__ = ["FakeInventoryApi"]


class FakeInventoryApi:
    """The fake store system. `known` limits which products exist (None: every product does)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.stock: dict[tuple[str, ...], int] = {}
        self.requests: list[dict[str, Any]] = []
        self.known: set[str] | None = None
        self.faults = Faults()
        self.arrivals = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.on_update: Callable[[dict[str, Any]], None] | None = None
        #: seconds to wait after applying a request before answering: the client may be gone
        #: by then (killed, timed out), and the change stands anyway, as on a real server
        self.answer_delay = 0.0
        #: while set to an unset event, applied requests wait for it before answering
        self.answer_gate: anyio.Event | None = None
        #: more tokens taken as valid: tests give each replica its own, to see who pushed
        self.also_accept: set[str] = set()
        #: (monotonic time, token) of every authenticated request, in order
        self.senders: list[tuple[float, str]] = []

    def quantity(
        self, product: str, store: str, size: str | None = None, width: str | None = None
    ) -> int | None:
        key = (product, store) if size is None else (product, size or "", width or "", store)
        return self.stock.get(key)

    async def inventory(self, request: web.Request) -> web.Response:
        self.arrivals += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._inventory(request)
        finally:
            self.in_flight -= 1

    async def _inventory(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if given != self.token and given not in self.also_accept:
            return web.json_response({"error": "Invalid or missing API token"}, status=401)
        self.senders.append((time.monotonic(), given))
        fault = await self.faults.answer()
        if fault is not None:
            return fault
        failure = self.faults.body_failure()
        if failure is not None:  # what the issue saw: a 200 that says the update failed
            return web.json_response({"success": False, "error": failure})
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": "Request body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "Request body must be a JSON object"}, status=400)
        self.requests.append(body)
        for required in ("store", "quantity"):
            if required not in body:
                return web.json_response(
                    {"error": f"Missing required field: {required}"}, status=400
                )
        if not isinstance(body["quantity"], int) or body["quantity"] < 0:
            return web.json_response(
                {"error": "quantity must be a non-negative integer"}, status=400
            )
        if "upc" in body:
            key: tuple[str, ...] = (str(body["upc"]), str(body["store"]))
            product = str(body["upc"])
        else:
            for required in ("sku", "size", "width"):
                if required not in body:
                    return web.json_response(
                        {"error": f"Missing required field: {required}"}, status=400
                    )
            key = (str(body["sku"]), str(body["size"]), str(body["width"]), str(body["store"]))
            product = str(body["sku"])
        if self.known is not None and product not in self.known:
            return web.json_response({"error": f"Product not found: {product}"}, status=404)
        self.stock[key] = body["quantity"]
        if self.on_update is not None:
            self.on_update(body)
        if self.answer_delay:
            await anyio.sleep(self.answer_delay)
        if self.answer_gate is not None:
            await self.answer_gate.wait()
        return web.json_response({"success": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/product/inventory", self.inventory)
        return app
