"""Klump Commerce: `PATCH /v1/products/update-webhook`, matched by product name.

Header `klump-secret-key`; body `{"name", "price", "quantity"}`. Klump identifies a product only
by its name, so the default key is `{product_name}` and variants that share a name are one Klump
item (quantities summed, lowest price). `sync_price = false` leaves the price out. 409 means
"already treated": acknowledged. One product per request; Klump publishes no rate limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import orjson
from pydantic import SecretStr, model_validator

from adapters._http import NETWORK_ERRORS, error_for_status, json_number, network_error
from adapters.base import Channel, ChannelContext, ChannelSpec, Shape
from daemon.config import BaseUrl, Settings
from daemon.errors import ChannelRejected
from daemon.models import ItemValue, Outcome, PushResult
from daemon.secrets import EnvSecret, FileSecret, pick

__all__ = ["SPEC", "KlumpChannel", "KlumpSettings"]


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
    """One PATCH per product; the status decides the item's outcome."""

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
        try:
            async with self._session.patch(
                self._url,
                data=orjson.dumps(self._body(item)),
                headers=headers,
                timeout=self._timeout,
            ) as response:
                body = await response.read()
                status = response.status
                response_headers = response.headers
        except NETWORK_ERRORS as exc:
            raise network_error(exc, channel=self.name) from exc
        if 200 <= status < 300 or status == 409:
            # 409: "high likelihood that we have already treated this request".
            return PushResult(item.key, Outcome.ACKNOWLEDGED)
        error = error_for_status(status, body, response_headers, channel=self.name)
        if isinstance(error, ChannelRejected):
            return PushResult(item.key, Outcome.REJECTED, reason=str(error))
        raise error


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
