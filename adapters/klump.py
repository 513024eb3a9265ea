"""Klump Commerce: `PATCH /v1/products/update-webhook`, matched by product name.

Header `klump-secret-key`; body `{"name", "price", "quantity"}`. Klump identifies a product only
by its name, so the default key is `{product_name}` and variants that share a name are one Klump
item (quantities summed, lowest price). `sync_price = false` leaves the price out. 409 means
"already treated": acknowledged. A 2xx is acknowledged only with a JSON object that reports no
failure (the docs show the product); an error in it, or a body that is not JSON, is retried. One
product per request; Klump publishes no rate limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
from pydantic import SecretStr, model_validator

from adapters._http import confirm, json_number, probe_result, send
from adapters.base import Channel, ChannelContext, ChannelSpec, Probe, Shape
from daemon.contract import (
    BaseUrl,
    EnvSecret,
    FileSecret,
    ItemValue,
    PushResult,
    Settings,
    pick,
)

__all__ = ["SPEC", "KlumpChannel", "KlumpSettings"]

ALREADY_TREATED = frozenset({409})


class KlumpSettings(Settings):
    """The channel-specific keys of a `type = "klump"` table."""

    base_url: BaseUrl = "https://api.useklump.com"
    secret_key_env: EnvSecret | None = None
    secret_key_file: FileSecret | None = None
    sync_price: bool = True

    @model_validator(mode="after")
    def _check(self) -> KlumpSettings:
        pick(self.secret_key_env, self.secret_key_file, "secret_key", required=True)
        return self

    @property
    def secret_key(self) -> SecretStr:
        key = self.secret_key_env or self.secret_key_file
        assert key is not None  # checked above
        return key


class KlumpChannel:
    """One PATCH per product; the status and the body decide the item's outcome."""

    max_batch = 1

    def __init__(self, settings: KlumpSettings, context: ChannelContext) -> None:
        self.name = context.name
        self._settings = settings
        self._session = context.session
        self._url = f"{settings.base_url}/v1/products/update-webhook"
        self._timeout = aiohttp.ClientTimeout(total=context.timeout)

    def _body(self, item: ItemValue) -> dict[str, object]:
        body: dict[str, object] = {"name": item.key, "quantity": item.value.quantity or 0}
        if self._settings.sync_price and item.value.price is not None:
            body["price"] = json_number(item.value.price)
        return body

    async def push(self, items: Sequence[ItemValue]) -> list[PushResult]:
        return [await self._push_one(item) for item in items]

    async def _push_one(self, item: ItemValue) -> PushResult:
        headers = {
            "klump-secret-key": self._settings.secret_key.get_secret_value(),
            "Content-Type": "application/json",
        }
        answer = await send(
            self._session,
            "PATCH",
            self._url,
            channel=self.name,
            payload=self._body(item),
            headers=headers,
            timeout=self._timeout,
        )
        # 409: "high likelihood that we have already treated this request". A 2xx must carry
        # the product object the docs show, not an error ("an error code and a message").
        return confirm(item.key, answer, channel=self.name, already_done=ALREADY_TREATED)

    async def probe(self) -> Probe:
        """An update without `name`: Klump checks the key, then refuses the body (400)."""
        headers = {
            "klump-secret-key": self._settings.secret_key.get_secret_value(),
            "Content-Type": "application/json",
        }
        answer = await send(
            self._session,
            "PATCH",
            self._url,
            channel=self.name,
            payload={},
            headers=headers,
            timeout=self._timeout,
        )
        return probe_result(answer)


def _shape(settings: KlumpSettings, key: str | None) -> Shape:
    return Shape(key_parts=(key or "{product_name}",), price=settings.sync_price)


def _build(settings: KlumpSettings, context: ChannelContext) -> Channel:
    return KlumpChannel(settings, context)


SPEC = ChannelSpec(
    settings=KlumpSettings,
    max_batch=KlumpChannel.max_batch,
    shape=_shape,
    build=_build,
    default_rate="5/s",
)
