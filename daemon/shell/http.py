"""The one HTTP listener: metrics, health, readiness, status, the keyCRM webhook, admin routes.

The webhook path carries a secret token, so the access log of this app prints the route's
pattern (`/webhooks/keycrm/{token}`), never the path as it came. Every body we answer with passes
through the process-wide scrubber: `/status` quotes channels' error texts, which may echo ours.
Everything a client sends is bounded: the body (1 MiB), the time to send it, the number of
webhook items and the length of each SKU; a credential is compared as bytes, whatever it holds.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from daemon.core.errors import LookupQueueFull, StoreUnavailable
from daemon.core.redact import scrub, scrub_text
from daemon.core.telemetry import Metrics
from daemon.shell.request_body import CLIENT_GONE_STATUS, BodyRefused, ClientGone, read_request_body

__all__ = [
    "BODY_TIMEOUT",
    "MAX_SKU_LENGTH",
    "MAX_WEBHOOK_BYTES",
    "MAX_WEBHOOK_ITEMS",
    "OPERATOR_HEADER",
    "WEBHOOK_RETRY_AFTER",
    "Controller",
    "build_app",
    "parse_webhook",
]

log = structlog.get_logger("stocksync.http")

MAX_WEBHOOK_BYTES = 1024 * 1024
#: keyCRM's own limit on the items of one stock update (`stocks` maximum: 10000).
MAX_WEBHOOK_ITEMS = 10_000
#: keyCRM's OpenAPI gives SKUs no maxLength; they are database strings of at most 255 characters,
#: and a longer one could not even be looked up (it would overflow the look-up URL).
MAX_SKU_LENGTH = 255
#: How long a client may take to send a webhook body, once its request head has arrived.
BODY_TIMEOUT = 30.0
#: Seconds a webhook refused for a store that cannot write suggests waiting (`Retry-After`).
WEBHOOK_RETRY_AFTER = 5


class Controller(Protocol):
    """What the HTTP routes need from the running daemon."""

    metrics: Metrics

    async def refresh_metrics(self) -> None: ...

    async def readiness(self) -> str | None:
        """None when ready, else the reason it is not."""
        ...

    def readiness_note(self) -> str | None:
        """What a ready daemon still wants noticed (its config differs from the leader's)."""
        ...

    async def status(self, merchant: str | None = None) -> dict[str, Any]:
        """The whole process, or one merchant (KeyError: no such merchant)."""
        ...

    async def webhook(self, merchant: str, skus: list[str]) -> None:
        """Take the merchant's SKUs for a look-up; returns once every one is committed.

        Raises `StoreUnavailable` if they cannot be (in time), `LookupQueueFull` if some did
        not fit in the queue; either way the webhook is answered 503."""
        ...

    def resync(self, trigger: str, merchant: str | None = None) -> None:
        """Every merchant served here, or one (KeyError: no such merchant)."""
        ...

    async def release_guard(
        self, channel: str | None, by: str, merchant: str | None = None
    ) -> dict[str, int]:
        """Release the zeroes the mass-change guard holds (one channel, or all); per channel
        how many. KeyError: no such merchant or channel; `StoreUnavailable`: not now."""
        ...


def parse_webhook(body: bytes) -> list[str]:
    """SKUs from keyCRM's stock webhook `[{"offer_id", "sku", "in_stock", "in_reserve"}]`.

    The payload is a trigger, never the truth (totals only, no signature): we take the SKUs and
    look their stock up. Raises ValueError, with a reason fit for the 400 body, if malformed.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError("body is not JSON") from exc
    if isinstance(data, dict):
        data = [data]  # tolerate a single object
    if not isinstance(data, list) or not data:
        raise ValueError("body must be a non-empty JSON array of stock changes")
    if len(data) > MAX_WEBHOOK_ITEMS:
        raise ValueError(f"more than {MAX_WEBHOOK_ITEMS} items")
    skus: list[str] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"item {index} is not an object")
        sku = item.get("sku")
        if isinstance(sku, int | float) and not isinstance(sku, bool):
            sku = str(sku)
        if not isinstance(sku, str) or not sku.strip():
            raise ValueError(f"item {index} has no sku")
        if len(sku.strip()) > MAX_SKU_LENGTH:
            raise ValueError(f"item {index}: sku is longer than {MAX_SKU_LENGTH} characters")
        for field in ("in_stock", "in_reserve"):
            value = item.get(field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"item {index}: {field} is not a number")
        skus.append(sku.strip())
    return skus


def _same(given: str, secret: SecretStr) -> bool:
    """A constant-time comparison that any header can take (non-ASCII, undecodable bytes)."""
    try:
        # aiohttp hands undecodable header bytes over as surrogate escapes: give them back.
        raw = given.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False  # not text any secret could be
    return hmac.compare_digest(raw, secret.get_secret_value().encode())


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(scrub(data), option=orjson.OPT_INDENT_2),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _merchant_of(token: str, tokens: Mapping[str, SecretStr]) -> str | None:
    """Whose webhook this is: every merchant's token is compared (in constant time each), so
    the answer's timing says nothing about which one, or how much of one, matched."""
    found = None
    for merchant, secret in tokens.items():
        if _same(token, secret):
            found = merchant
    return found


def _one_query(request: web.Request, allowed: set[str]) -> dict[str, str] | web.Response:
    """The query's parameters, each at most once and none unknown (a misspelt `?chanel=pos`
    must not act on every channel); a 400 otherwise."""
    query = request.query
    if set(query) - allowed or any(len(query.getall(k)) > 1 for k in query):
        wanted = " and ".join(f"{k}=NAME" for k in sorted(allowed))
        return _json({"error": f"the query parameters are at most one of each: {wanted}"}, 400)
    return {k: query[k] for k in query if query[k]}


async def _take(controller: Controller, merchant: str, skus: list[str]) -> web.Response:
    """202 once every SKU is committed to the state; 503 if the store cannot write them (in
    time) or the look-up queue cannot hold them all."""
    try:
        await controller.webhook(merchant, skus)
    except LookupQueueFull as exc:
        # The SKUs that fit are queued; the sender learns the delivery did not fully land.
        controller.metrics.webhook_events.labels(outcome="rejected").inc()
        log.warning("webhook.refused", problem="the look-up queue is full", skus=len(skus))
        return _json(
            {"error": str(exc), "dropped": exc.dropped},
            status=503,
            headers={"Retry-After": str(WEBHOOK_RETRY_AFTER)},
        )
    except StoreUnavailable:
        # Not on disk, so not accepted: a 5xx tells keyCRM the delivery failed (whether it
        # sends it again is undocumented; the next scan carries the change either way).
        controller.metrics.webhook_events.labels(outcome="rejected").inc()
        log.warning("webhook.refused", problem="the state store cannot write", skus=len(skus))
        return _json(
            {"error": "the state store cannot take the webhook now; send it again"},
            status=503,
            headers={"Retry-After": str(WEBHOOK_RETRY_AFTER)},
        )
    controller.metrics.webhook_events.labels(outcome="accepted").inc()
    log.info("webhook.accepted", merchant=merchant, skus=len(skus))
    return _json({"accepted": len(skus)}, status=202)


#: who released a hold, as the history records it: what the client says, bounded and printable
OPERATOR_HEADER = "X-Stocksync-Operator"
_MAX_OPERATOR = 80


def _operator(request: web.Request) -> str:
    """`guard release by NAME via POST /admin/guard/release` (NAME from `OPERATOR_HEADER`)."""
    given = request.headers.get(OPERATOR_HEADER, "")
    name = "".join(c for c in given if c.isprintable())[:_MAX_OPERATOR].strip() or "an operator"
    return f"guard release by {name} via POST /admin/guard/release"


def _admin_refusal(request: web.Request, expected: SecretStr | None) -> web.Response | None:
    """None when the request carries the admin bearer token; else the 401 to answer. Without an
    admin token configured the admin routes do not exist (404)."""
    if expected is None:
        raise web.HTTPNotFound
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not _same(token.strip(), expected):
        return _json({"error": "a valid admin bearer token is required"}, status=401)
    return None


def _guard_release(
    controller: Controller, admin_token: Callable[[], SecretStr | None]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`POST /admin/guard/release[?channel=NAME]`, behind the admin token like `/admin/resync`."""

    async def admin_guard_release(request: web.Request) -> web.Response:
        refused = _admin_refusal(request, admin_token())
        if refused is not None:
            return refused
        return await _release_guard(controller, request)

    return admin_guard_release


async def _release_guard(controller: Controller, request: web.Request) -> web.Response:
    query = _one_query(request, {"channel", "merchant"})
    if isinstance(query, web.Response):
        return query
    try:
        released = await controller.release_guard(
            query.get("channel"), _operator(request), query.get("merchant")
        )
    except KeyError:
        return _json({"error": "no merchant or channel of that name is configured"}, 404)
    except StoreUnavailable as exc:
        return _json(
            {"error": f"cannot release now: {exc}"},
            status=503,
            headers={"Retry-After": str(WEBHOOK_RETRY_AFTER)},
        )
    return _json({"released": released, "items": sum(released.values())})


@web.middleware
async def _access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    status = 500  # what aiohttp answers for an exception that is not an HTTP one
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        info = request.match_info.route.resource
        path = info.canonical if info is not None else "(unmatched)"
        log.debug("http.request", method=request.method, route=path, status=status)
    return response


def build_app(
    controller: Controller,
    *,
    webhook_tokens: Callable[[], Mapping[str, SecretStr]],
    admin_token: Callable[[], SecretStr | None],
) -> web.Application:
    """The aiohttp application; the caller runs it with access logging off (see module doc).

    The tokens are read at each request: a reload that rotates them needs no new listener.
    `webhook_tokens()` maps each merchant with a webhook to its token: the token says whose
    webhook it is.
    """
    app = web.Application(middlewares=[_access_log], client_max_size=MAX_WEBHOOK_BYTES)

    async def metrics(_request: web.Request) -> web.Response:
        await controller.refresh_metrics()
        body = generate_latest(controller.metrics.registry)
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        reason = await controller.readiness()
        if reason is None:
            note = controller.readiness_note()
            return web.Response(text="ready\n" if note is None else f"ready: {note}\n")
        return web.Response(text=scrub_text(f"not ready: {reason}\n"), status=503)

    async def status(request: web.Request) -> web.Response:
        query = _one_query(request, {"merchant"})
        if isinstance(query, web.Response):
            return query
        try:
            return _json(await controller.status(query.get("merchant")))
        except KeyError:
            return _json({"error": "no merchant of that name is served here"}, 404)

    async def webhook(request: web.Request) -> web.Response:
        merchant = _merchant_of(request.match_info["token"], webhook_tokens())
        if merchant is None:
            # Counted: a token rotated here but not in keyCRM loses every delivery this way.
            controller.metrics.webhook_events.labels(outcome="rejected").inc()
            log.warning("webhook.rejected", problem="no merchant has this token", status=404)
            raise web.HTTPNotFound
        try:
            body = await read_request_body(request, within=BODY_TIMEOUT)
            skus = parse_webhook(body)
        except ClientGone:
            return web.Response(status=CLIENT_GONE_STATUS)  # for the access log only
        except BodyRefused as exc:
            controller.metrics.webhook_events.labels(outcome="rejected").inc()
            log.warning("webhook.rejected", problem=exc.problem)
            return _json({"error": exc.message}, status=exc.status)
        except ValueError as exc:
            controller.metrics.webhook_events.labels(outcome="rejected").inc()
            log.warning("webhook.rejected", problem=str(exc))
            return _json({"error": str(exc)}, status=400)
        return await _take(controller, merchant, skus)

    async def admin_resync(request: web.Request) -> web.Response:
        refused = _admin_refusal(request, admin_token())
        if refused is not None:
            return refused
        query = _one_query(request, {"merchant"})
        if isinstance(query, web.Response):
            return query
        try:
            controller.resync("http", query.get("merchant"))
        except KeyError:
            return _json({"error": "no merchant of that name is served here"}, 404)
        return _json({"resync": "started"}, status=202)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_post("/webhooks/keycrm/{token}", webhook)
    app.router.add_post("/admin/resync", admin_resync)
    app.router.add_post("/admin/guard/release", _guard_release(controller, admin_token))
    return app
