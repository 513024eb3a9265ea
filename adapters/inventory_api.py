"""The Inventory Update API: a store system's `POST /api/product/inventory`, one item a request.

Body `{"upc", "store", "quantity"}`, or `{"sku", "size", "width", "store", "quantity"}` where
there is no UPC; Bearer token. The API has no batch form, so `max_batch` is 1 and the dispatcher's
`concurrency` runs requests side by side. Keys: the offer's barcode (or SKU, size and width taken
from keyCRM properties) plus the store code, from `store` (totals) or `store_map` (per warehouse).

The API documents no success body and its errors as `{"error": "..."}` without a status, and has
been seen answering `200 {"success": false, "error": "database is locked"}`: a 2xx is
acknowledged only with an empty body or a JSON object that reports no failure; else retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import aiohttp
from pydantic import SecretStr, model_validator

from adapters._http import confirm, probe_result, send
from adapters.base import Channel, ChannelContext, ChannelSpec, Probe, Shape
from daemon.contract import BaseUrl, EnvSecret, FileSecret, ItemValue, PushResult, Settings, pick

__all__ = ["SPEC", "InventoryApiChannel", "InventoryApiSettings"]


class InventoryApiSettings(Settings):
    """The channel-specific keys of a `type = "inventory_api"` table."""

    base_url: BaseUrl
    token_env: EnvSecret | None = None
    token_file: FileSecret | None = None
    match: Literal["upc", "sku_size_width"] = "upc"
    size_property: str = "Size"
    width_property: str = "Width"
    store: str | None = None
    store_map: dict[int, str] | None = None

    @model_validator(mode="after")
    def _check(self) -> InventoryApiSettings:
        pick(self.token_env, self.token_file, "token", required=True)
        if (self.store is None) == (self.store_map is None):
            raise ValueError("give store (totals) or store_map (per warehouse), exactly one")
        codes = [self.store] if self.store is not None else list((self.store_map or {}).values())
        if any(not code.strip() for code in codes if code is not None):
            raise ValueError("store codes must not be empty")
        return self

    @property
    def token(self) -> SecretStr:
        token = self.token_env or self.token_file
        assert token is not None
        return token


class InventoryApiChannel:
    """Pushes one item per request; the answer's status and body decide the item's outcome."""

    max_batch = 1

    def __init__(self, settings: InventoryApiSettings, context: ChannelContext) -> None:
        self.name = context.name
        self._settings = settings
        self._session = context.session
        self._url = f"{settings.base_url}/api/product/inventory"
        self._timeout = aiohttp.ClientTimeout(total=context.timeout)

    def _body(self, item: ItemValue) -> dict[str, object]:
        parts = item.parts
        quantity = item.value.quantity if item.value.quantity is not None else 0
        if self._settings.match == "upc":
            upc, store = parts
            return {"upc": upc, "store": store, "quantity": quantity}
        sku, size, width, store = parts
        return {"sku": sku, "size": size, "width": width, "store": store, "quantity": quantity}

    async def push(self, items: Sequence[ItemValue]) -> list[PushResult]:
        return [await self._push_one(item) for item in items]

    async def _push_one(self, item: ItemValue) -> PushResult:
        headers = {
            "Authorization": f"Bearer {self._settings.token.get_secret_value()}",
            "Content-Type": "application/json",
        }
        answer = await send(
            self._session,
            "POST",
            self._url,
            channel=self.name,
            payload=self._body(item),
            headers=headers,
            timeout=self._timeout,
        )
        # The API documents no success body, and errors as `{"error": "..."}` without a status:
        # a 200 carrying one (`{"success": false, "error": "database is locked"}`) is retried.
        return confirm(item.key, answer, channel=self.name, empty_ok=True)

    async def probe(self) -> Probe:
        """An empty update: the API checks the token, then refuses the missing fields (400)."""
        headers = {
            "Authorization": f"Bearer {self._settings.token.get_secret_value()}",
            "Content-Type": "application/json",
        }
        answer = await send(
            self._session,
            "POST",
            self._url,
            channel=self.name,
            payload={},
            headers=headers,
            timeout=self._timeout,
        )
        return probe_result(answer)


def _shape(settings: InventoryApiSettings, key: str | None) -> Shape:
    if key is not None:
        raise ValueError("inventory_api builds its key from `match`; remove `key`")
    if settings.match == "upc":
        parts: tuple[str, ...] = ("{barcode}",)
    else:
        parts = (
            "{sku}",
            f"{{prop[{settings.size_property}]}}",
            f"{{prop[{settings.width_property}]}}",
        )
    return Shape(key_parts=parts, location=settings.store, locations=settings.store_map)


def _build(settings: InventoryApiSettings, context: ChannelContext) -> Channel:
    return InventoryApiChannel(settings, context)


SPEC = ChannelSpec(
    settings=InventoryApiSettings,
    max_batch=InventoryApiChannel.max_batch,
    shape=_shape,
    build=_build,
    default_rate="10/s",
)
