"""Ordergroove: `PATCH /products-batch/update/` with `[{"product_id", "live"}]`, 100 a request.

Stock in Ordergroove is a flag: a product is `live` while available stock is above
`live_threshold` (default 0), so a quantity change that stays on one side of the threshold is no
push at all. Auth is the API-user HMAC scheme (an `authorization` header carrying
`{"public_id", "ts", "sig_field", "sig"}` with `sig = base64(HMAC-SHA256(hash key,
"{sig_field}|{ts}"))`, a fresh `ts` each request, and `og-authorization: True`) or, for the newer
application scope, `x-api-key`. The per-product results decide each item: 200 acknowledged, 400
and 404 rejected, any other status or a missing result retried; both response shapes the
documents show are accepted. A 2xx whose body is not one of them (not JSON, no `results`, an
`error` or `errors` of its own) is retried whole: nothing says any product was updated.

Read-back (drift): `GET {base_url}/products/{product_id}/`, one product per request, its `live`
flag; 404 means the product is missing. The reference lists the application and storefront scopes
for this route: with API-user HMAC credentials a 401/403 makes the channel unreadable, not wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import Field, SecretStr, model_validator

from adapters._http import (
    acknowledged,
    error_for_status,
    get,
    probe_result,
    send,
    short_text,
    success_document,
)
from adapters.base import Channel, ChannelContext, ChannelSpec, Probe, Shape
from daemon.contract import (
    BaseUrl,
    ChannelRetryable,
    EnvSecret,
    FileSecret,
    ItemValue,
    Outcome,
    PushResult,
    Settings,
    Value,
    pick,
)

__all__ = ["SPEC", "OrdergrooveChannel", "OrdergrooveSettings", "signature"]


class OrdergrooveSettings(Settings):
    """The channel-specific keys of a `type = "ordergroove"` table."""

    base_url: BaseUrl = "https://restapi.ordergroove.com"
    public_id: str | None = None
    sig_field: str | None = None
    hash_key_env: EnvSecret | None = None
    hash_key_file: FileSecret | None = None
    api_key_env: EnvSecret | None = None
    api_key_file: FileSecret | None = None
    live_threshold: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> OrdergrooveSettings:
        pick(self.hash_key_env, self.hash_key_file, "hash_key", required=False)
        pick(self.api_key_env, self.api_key_file, "api_key", required=False)
        hmac_parts = (self.public_id, self.sig_field, self.hash_key)
        if self.api_key is not None:
            if any(part is not None for part in hmac_parts):
                raise ValueError("give api_key_env (x-api-key) or the HMAC keys, not both")
        elif any(part is None for part in hmac_parts):
            raise ValueError(
                "give public_id, sig_field and hash_key_env (HMAC), or api_key_env (x-api-key)"
            )
        return self

    @property
    def hash_key(self) -> SecretStr | None:
        return self.hash_key_env or self.hash_key_file

    @property
    def api_key(self) -> SecretStr | None:
        return self.api_key_env or self.api_key_file


def signature(hash_key: str, sig_field: str, ts: int) -> str:
    """`base64(HMAC-SHA256(hash_key, "{sig_field}|{ts}"))`, as Ordergroove's JS example computes."""
    digest = hmac.new(hash_key.encode(), f"{sig_field}|{ts}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _results(body: Any) -> dict[str, dict[str, Any]]:
    """Per-product results from `{"results": [...]}` or `[{"results": [...]}, ...]`."""
    groups = body if isinstance(body, list) else [body]
    results: dict[str, dict[str, Any]] = {}
    for group in groups:
        listed = group.get("results") if isinstance(group, dict) else None
        if not isinstance(listed, list):
            raise ValueError("no `results` list")
        for result in listed:
            if not isinstance(result, dict):
                raise ValueError("a result is not an object")
            product, status = result.get("product_id"), result.get("status")
            if not isinstance(product, str | int) or not isinstance(status, int):
                raise ValueError("a result lacks product_id or status")
            results[str(product)] = result
    return results


class OrdergrooveChannel:
    """Up to 100 products per PATCH; each product's own status decides its outcome."""

    max_batch = 100
    max_read_batch = 1  # one GET per product: Ordergroove has no batched read

    def __init__(
        self,
        settings: OrdergrooveSettings,
        context: ChannelContext,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = context.name
        self._settings = settings
        self._session = context.session
        self._url = f"{settings.base_url}/products-batch/update/"
        self._timeout = aiohttp.ClientTimeout(total=context.timeout)
        self._clock = clock

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        settings = self._settings
        if settings.api_key is not None:
            headers["x-api-key"] = settings.api_key.get_secret_value()
            return headers
        assert settings.hash_key is not None  # checked by the settings
        assert settings.sig_field is not None
        ts = int(self._clock())  # fresh each request: Ordergroove refuses stale signatures
        auth = {
            "public_id": settings.public_id,
            "ts": ts,
            "sig_field": settings.sig_field,
            "sig": signature(settings.hash_key.get_secret_value(), settings.sig_field, ts),
        }
        headers["authorization"] = orjson.dumps(auth).decode()
        headers["og-authorization"] = "True"
        return headers

    async def push(self, items: Sequence[ItemValue]) -> list[PushResult]:
        payload = [{"product_id": item.key, "live": bool(item.value.live)} for item in items]
        answer = await send(
            self._session,
            "PATCH",
            self._url,
            channel=self.name,
            payload=payload,
            headers=self._headers(),
            timeout=self._timeout,
        )
        document = success_document(answer, channel=self.name)
        try:
            results = _results(document)
        except ValueError as exc:
            detail = f"{self.name}: unreadable answer ({exc}): {short_text(answer.body)}"
            raise ChannelRetryable(detail, status=answer.status) from exc
        return [self._outcome(item.key, results.get(item.key)) for item in items]

    async def read(self, keys: Sequence[str]) -> dict[str, Value | None]:
        values: dict[str, Value | None] = {}
        for key in keys:
            answer = await get(
                self._session,
                f"{self._settings.base_url}/products/{quote(key, safe='')}/",
                channel=self.name,
                headers=self._headers(),
                timeout=self._timeout,
            )
            if answer.status == 404:
                values[key] = None
                continue
            if not answer.ok:
                raise error_for_status(
                    answer.status, answer.body, answer.headers, channel=self.name
                )
            try:
                product = orjson.loads(answer.body)
            except orjson.JSONDecodeError as exc:
                detail = f"{self.name}: unreadable product: {short_text(answer.body)}"
                raise ChannelRetryable(detail, status=answer.status) from exc
            live = product.get("live") if isinstance(product, dict) else None
            if isinstance(live, bool):
                values[key] = Value(live=live)
        return values

    async def probe(self) -> Probe:
        """An empty batch, signed like a real one: authenticated, and nothing to change."""
        answer = await send(
            self._session,
            "PATCH",
            self._url,
            channel=self.name,
            payload=[],
            headers=self._headers(),
            timeout=self._timeout,
        )
        return probe_result(answer)

    def _outcome(self, key: str, result: dict[str, Any] | None) -> PushResult:
        if result is None:
            return PushResult(key, Outcome.RETRY, reason=f"{self.name}: no result for the product")
        status = result["status"]
        if 200 <= status < 300:
            return acknowledged(key, result, channel=self.name)
        if status in (400, 404):
            what = "not found" if status == 404 else "refused"
            return PushResult(
                key, Outcome.REJECTED, reason=f"{self.name}: product {what} ({status})"
            )
        return PushResult(key, Outcome.RETRY, reason=f"{self.name}: product status {status}")


def _shape(settings: OrdergrooveSettings, key: str | None) -> Shape:
    return Shape(key_parts=(key or "{sku}",), live_threshold=settings.live_threshold)


def _build(settings: OrdergrooveSettings, context: ChannelContext) -> Channel:
    return OrdergrooveChannel(settings, context)


SPEC = ChannelSpec(
    settings=OrdergrooveSettings,
    max_batch=OrdergrooveChannel.max_batch,
    shape=_shape,
    build=_build,
    default_rate="600/m",
)
