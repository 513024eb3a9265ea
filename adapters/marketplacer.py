"""Marketplacer: the GraphQL Seller API's `variantUpdate`, or the legacy REST inventories route.

GraphQL (default): `POST {base_url}/graphql`, several variants per request as aliased
`variantUpdate(input: {variantId, attributes: {countOnHand}})` mutations in one document; each
alias's `errors { field messages }` rejects that item alone. A top-level error whose path names
the alias (a resolver that failed, under a 200) retries that item alone, or rejects it if its code
says the input is at fault (`BAD_USER_INPUT`, `NOT_FOUND`, ...); an alias without its updated
`variant` is retried, never taken as done. A top-level error without a path is about the call:
`MISSING_SCOPE` pauses the channel. Keys are variant global ids, from a `key_map` or a key
template.

REST (`api = "rest"`, multi-store adverts): `PUT {base_url}/api/v2/client/variants/{id}/inventories`
with JSON:API records of `count_on_hand` per `seller_id` (`seller_map` maps keyCRM warehouses to
sellers; a seller with nothing gets an explicit 0, since a seller left out keeps its old stock).
A 2xx must be the JSON:API `data` document the docs show: one with `errors`, or not JSON, retries
that variant.

Read-back (drift): GraphQL `nodes(ids: [...]) { ... on Variant { id countOnHand } }`, null for a
variant the seller cannot see; REST `GET .../variants/{id}/inventories`, 404 for an unknown
variant, and a seller without a record is missing. Infinite stock cannot be compared: unreadable.

Auth: `marketplacer-api-key: <key>` or `Authorization: Bearer <key>`, one of them, never both,
with optional HTTP Basic credentials in front for protected environments (then the key must go
in `marketplacer-api-key`). Marketplacer allows 750 requests per 10 s per key; 429 and 503 honour
Retry-After and wait at least 60 s without it.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import SecretStr, model_validator

from adapters._http import (
    Answer,
    acknowledged,
    error_for_status,
    get,
    json_document,
    probe_result,
    send,
    short_text,
    success_document,
)
from adapters.base import Channel, ChannelContext, ChannelSpec, Probe, Shape
from daemon.contract import (
    BaseUrl,
    ChannelError,
    ChannelFatal,
    ChannelRejected,
    ChannelRetryable,
    EnvSecret,
    FileSecret,
    ItemValue,
    Outcome,
    PushResult,
    Settings,
    Value,
    pick,
    split_key,
)

__all__ = ["READ_QUERY", "SPEC", "MarketplacerChannel", "MarketplacerSettings", "mutation"]

MIN_RETRY_AFTER = 60.0  # Marketplacer: "if Retry-After is absent, wait at least 60 seconds"
FATAL_CODES = {"MISSING_SCOPE", "UNAUTHORIZED", "UNAUTHENTICATED", "FORBIDDEN"}
#: codes of errors about the document's content: the whole batch is refused, none applied
CONTENT_CODES = {"BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED", "INVALID_VARIABLES"}
#: codes of an error whose path names one alias that say that item's input is at fault
ITEM_CODES = CONTENT_CODES | {"NOT_FOUND", "UNPROCESSABLE", "INVALID"}
_SELECTION = "variant { id countOnHand } errors { field messages }"
#: read-back: `nodes` answers in the order asked, null for an id the seller cannot see
READ_QUERY = (
    "query StocksyncRead($ids: [ID!]!) { nodes(ids: $ids) { ... on Variant { id countOnHand } } }"
)


class MarketplacerSettings(Settings):
    """The channel-specific keys of a `type = "marketplacer"` table."""

    base_url: BaseUrl
    api_key_env: EnvSecret | None = None
    api_key_file: FileSecret | None = None
    auth_header: Literal["marketplacer-api-key", "bearer"] = "marketplacer-api-key"
    basic_user_env: EnvSecret | None = None
    basic_password_env: EnvSecret | None = None
    api: Literal["graphql", "rest"] = "graphql"
    seller_map: dict[int, int] | None = None

    @model_validator(mode="after")
    def _check(self) -> MarketplacerSettings:
        pick(self.api_key_env, self.api_key_file, "api_key", required=True)
        if (self.basic_user_env is None) != (self.basic_password_env is None):
            raise ValueError("give both basic_user_env and basic_password_env, or neither")
        if self.basic_user_env is not None and self.auth_header == "bearer":
            raise ValueError(
                "with HTTP Basic in front, Authorization is taken: use auth_header = "
                '"marketplacer-api-key"'
            )
        if self.seller_map is not None and self.api != "rest":
            raise ValueError('seller_map needs api = "rest" (GraphQL sets the variant itself)')
        return self

    @property
    def api_key(self) -> SecretStr:
        key = self.api_key_env or self.api_key_file
        assert key is not None  # checked above
        return key


@functools.lru_cache(maxsize=256)
def mutation(count: int) -> str:
    """One document updating `count` variants: aliases i0..iN over variables $i0..$iN (the
    same few sizes over and over: built once each)."""
    variables = ", ".join(f"$i{n}: VariantUpdateMutationInput!" for n in range(count))
    fields = " ".join(f"i{n}: variantUpdate(input: $i{n}) {{ {_SELECTION} }}" for n in range(count))
    return f"mutation StocksyncVariantUpdate({variables}) {{ {fields} }}"


def _about_input(message: str, extensions: Any, code: Any) -> bool:
    """A path-less GraphQL error about the variables we sent (graphql-ruby's coercion errors
    name the variable and list `problems`), as opposed to a server fault worth retrying."""
    if code in CONTENT_CODES:
        return True
    if isinstance(extensions, dict) and isinstance(extensions.get("problems"), list):
        return True
    return message.startswith("Variable $")


def _inventory_records(body: bytes) -> list[tuple[int | None, int | None]] | None:
    """(seller id, count) per JSON:API inventories record; count None for infinite stock."""
    try:
        records = orjson.loads(body)["data"]
        out: list[tuple[int | None, int | None]] = []
        for record in records:
            attributes = record["attributes"]
            seller, count = attributes.get("seller_id"), attributes.get("count_on_hand")
            if attributes.get("infinite"):
                count = None
            elif not isinstance(count, int):
                return None
            out.append((int(seller) if seller is not None else None, count))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return out


def _messages(errors: Any) -> str:
    parts = []
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            field = error.get("field") or "input"
            messages = error.get("messages") or [error.get("message", "")]
            parts.append(f"{field}: {'; '.join(str(m) for m in messages)}")
    return ", ".join(parts) or "refused"


class MarketplacerChannel:
    """GraphQL: one document a batch. REST: one PUT per variant in the batch.

    Read-back: GraphQL asks `nodes(ids:)` for up to 100 variants in one document; REST reads one
    variant's inventories per request (`max_read_batch` 1, so callers pace per request).
    """

    max_batch = 100

    def __init__(self, settings: MarketplacerSettings, context: ChannelContext) -> None:
        self.name = context.name
        self.max_read_batch = 1 if settings.api == "rest" else 100
        self._settings = settings
        self._session = context.session
        self._timeout = aiohttp.ClientTimeout(total=context.timeout)

    def _headers(self, content_type: str) -> dict[str, str]:
        settings = self._settings
        key = settings.api_key.get_secret_value()
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if settings.auth_header == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        else:
            headers["marketplacer-api-key"] = key
        user, password = settings.basic_user_env, settings.basic_password_env
        if user is not None and password is not None:
            pair = f"{user.get_secret_value()}:{password.get_secret_value()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return headers

    async def _send(self, method: str, url: str, payload: Any, content_type: str) -> Answer:
        return await send(
            self._session,
            method,
            url,
            channel=self.name,
            payload=payload,
            headers=self._headers(content_type),
            timeout=self._timeout,
        )

    def _raise_for(self, reply: Answer) -> None:
        if not reply.ok:
            raise error_for_status(
                reply.status,
                reply.body,
                reply.headers,
                channel=self.name,
                min_retry_after=MIN_RETRY_AFTER,
            )

    async def push(self, items: Sequence[ItemValue]) -> list[PushResult]:
        if self._settings.api == "rest":
            return await self._push_rest(items)
        return await self._push_graphql(items)

    async def read(self, keys: Sequence[str]) -> dict[str, Value | None]:
        if self._settings.api == "rest":
            return await self._read_rest(keys)
        return await self._read_graphql(keys)

    async def probe(self) -> Probe:
        """GraphQL: `{ __typename }`, a read. REST: a variant look-up by an external id no
        variant has (`GET /api/v2/client/variants?external_id=...`), also a read."""
        base = self._settings.base_url
        if self._settings.api == "rest":
            url = f"{base}/api/v2/client/variants?external_id=stocksync-probe"
            headers = self._headers("application/vnd.api+json")
            reply = await get(
                self._session, url, channel=self.name, headers=headers, timeout=self._timeout
            )
            return probe_result(reply)
        reply = await self._send(
            "POST", f"{base}/graphql", {"query": "{ __typename }"}, "application/json"
        )
        result = probe_result(reply)
        if reply.ok:
            try:
                self._top_level_errors(orjson.loads(reply.body).get("errors"))
            except ChannelFatal as exc:  # MISSING_SCOPE and friends: the key lacks rights
                return Probe(False, "auth refused", str(exc))
            except (ChannelError, orjson.JSONDecodeError, AttributeError):
                pass  # any other answer from GraphQL itself means we got past auth
        return result

    # --- GraphQL -------------------------------------------------------------------------------

    async def _graphql(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One document's answer as a JSON object; a transport failure raises its error class."""
        reply = await self._send(
            "POST", f"{self._settings.base_url}/graphql", payload, "application/json"
        )
        self._raise_for(reply)
        # GraphQL's `errors` are read below (an alias's, the call's); here only "is it JSON"
        answer = json_document(reply, channel=self.name)
        if not isinstance(answer, dict):
            raise ChannelRetryable(f"{self.name}: answer is not a JSON object")
        return answer

    async def _read_graphql(self, keys: Sequence[str]) -> dict[str, Value | None]:
        answer = await self._graphql({"query": READ_QUERY, "variables": {"ids": list(keys)}})
        unreadable = self._node_errors(answer.get("errors"))
        data = answer.get("data")
        nodes = data.get("nodes") if isinstance(data, dict) else None
        if not isinstance(nodes, list) or len(nodes) != len(keys):
            raise ChannelRetryable(f"{self.name}: the answer's nodes do not match the ids asked")
        values: dict[str, Value | None] = {}
        for n, (key, node) in enumerate(zip(keys, nodes, strict=True)):
            if n in unreadable or not isinstance(node, dict | None):
                continue
            if not node:  # null: not the seller's to see; {}: an id of something else
                values[key] = None
            elif node.get("id") == key and isinstance(node.get("countOnHand"), int):
                values[key] = Value(quantity=node["countOnHand"])
        return values

    def _node_errors(self, errors: Any) -> set[int]:
        """Indexes of nodes an error names (unreadable); any other error is about the call."""
        indexes: set[int] = set()
        for error in errors if isinstance(errors, list) else []:
            if not isinstance(error, dict):
                continue
            path = error.get("path")
            if isinstance(path, list) and len(path) > 1 and isinstance(path[1], int):
                indexes.add(path[1])
                continue
            message = str(error.get("message", "error"))
            extensions = error.get("extensions")
            code = extensions.get("code") if isinstance(extensions, dict) else None
            if code in FATAL_CODES:
                raise ChannelFatal(f"{self.name}: {code}: {message}")
            raise ChannelRetryable(f"{self.name}: GraphQL error: {message}")
        return indexes

    async def _push_graphql(self, items: Sequence[ItemValue]) -> list[PushResult]:
        variables = {
            f"i{n}": {
                "variantId": item.key,
                "attributes": {"countOnHand": item.value.quantity or 0},
            }
            for n, item in enumerate(items)
        }
        payload = {"query": mutation(len(items)), "variables": variables}
        answer = await self._graphql(payload)
        per_alias = self._top_level_errors(answer.get("errors"))
        data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
        results = []
        for n, item in enumerate(items):
            alias = f"i{n}"
            result = data.get(alias) if isinstance(data, dict) else None
            variant = result.get("variant") if isinstance(result, dict) else None
            if alias in per_alias:
                results.append(PushResult(item.key, *per_alias[alias]))
            elif isinstance(result, dict) and result.get("errors"):
                # the mutation's own `errors { field messages }`: the input named is invalid
                reason = f"{self.name}: {_messages(result['errors'])}"
                results.append(PushResult(item.key, Outcome.REJECTED, reason=reason))
            elif not isinstance(variant, dict):
                reason = f"{self.name}: no updated variant in the answer for it"
                results.append(PushResult(item.key, Outcome.RETRY, reason=reason))
            else:
                results.append(acknowledged(item.key, result, channel=self.name))
        return results

    def _top_level_errors(self, errors: Any) -> dict[str, tuple[Outcome, str]]:
        """Errors naming an alias fail that item; any other error is about the whole call.

        An alias's error rejects it only when its code says the input is at fault; otherwise
        (a resolver that failed: "database is locked") the item is retried.
        """
        per_alias: dict[str, tuple[Outcome, str]] = {}
        for error in errors if isinstance(errors, list) else []:
            if not isinstance(error, dict):
                continue
            message = str(error.get("message", "error"))
            path = error.get("path")
            extensions = error.get("extensions")
            code = extensions.get("code") if isinstance(extensions, dict) else None
            if isinstance(path, list) and path and isinstance(path[0], str):
                outcome = Outcome.REJECTED if code in ITEM_CODES else Outcome.RETRY
                per_alias[path[0]] = (outcome, f"{self.name}: {message}")
            elif code in FATAL_CODES:
                raise ChannelFatal(f"{self.name}: {code}: {message}")
            elif _about_input(message, extensions, code):
                # Refused for its content as a whole, not executed: the dispatcher splits the
                # batch until the item it chokes on stands alone.
                raise ChannelRejected(f"{self.name}: GraphQL error: {message}")
            else:
                raise ChannelRetryable(f"{self.name}: GraphQL error: {message}")
        return per_alias

    # --- REST ----------------------------------------------------------------------------------

    async def _push_rest(self, items: Sequence[ItemValue]) -> list[PushResult]:
        by_variant: dict[str, list[ItemValue]] = {}
        for item in items:
            by_variant.setdefault(item.parts[0], []).append(item)
        outcome: dict[str, PushResult] = {}
        for variant, group in by_variant.items():
            records = []
            for item in group:
                attributes: dict[str, Any] = {"count_on_hand": item.value.quantity or 0}
                if len(item.parts) > 1:
                    attributes["seller_id"] = int(item.parts[1])
                records.append({"type": "inventories", "attributes": attributes})
            url = f"{self._settings.base_url}/api/v2/client/variants/{variant}/inventories"
            reply = await self._send("PUT", url, {"data": records}, "application/vnd.api+json")
            for item in group:
                outcome[item.key] = self._rest_outcome(item.key, reply)
        return [outcome[item.key] for item in items]

    def _rest_outcome(self, key: str, reply: Answer) -> PushResult:
        """One variant's PUT: a 4xx rejects it; a 2xx must be the JSON:API `data` document the
        docs show, without `errors` (else this variant is retried, the batch's others stand);
        any other failure raises for the whole batch, as a 429 or 5xx is about the channel."""
        try:
            document = success_document(reply, channel=self.name, min_retry_after=MIN_RETRY_AFTER)
        except ChannelRejected as exc:
            return PushResult(key, Outcome.REJECTED, reason=str(exc))
        except ChannelRetryable as exc:
            if not reply.ok:
                raise
            return PushResult(key, Outcome.RETRY, reason=str(exc))
        if not isinstance(document, dict) or not isinstance(document.get("data"), list):
            reason = f"{self.name}: not an inventories document: {short_text(reply.body)}"
            return PushResult(key, Outcome.RETRY, reason=reason)
        return acknowledged(key, document, channel=self.name)

    async def _read_rest(self, keys: Sequence[str]) -> dict[str, Value | None]:
        by_variant: dict[str, list[str]] = {}
        for key in keys:
            by_variant.setdefault(split_key(key)[0], []).append(key)
        values: dict[str, Value | None] = {}
        for variant, group in by_variant.items():
            url = f"{self._settings.base_url}/api/v2/client/variants/{variant}/inventories"
            reply = await get(
                self._session,
                url,
                channel=self.name,
                headers=self._headers("application/vnd.api+json"),
                timeout=self._timeout,
            )
            if reply.status == 404:  # no such variant (ids change after some re-imports)
                values.update(dict.fromkeys(group))
                continue
            self._raise_for(reply)
            records = _inventory_records(reply.body)
            if records is None:
                raise ChannelRetryable(
                    f"{self.name}: unreadable inventories: {short_text(reply.body)}"
                )
            for key in group:
                parts = split_key(key)
                seller = int(parts[1]) if len(parts) > 1 else None
                mine = [r for r in records if r[0] == seller] or (
                    records if seller is None and len(records) == 1 else []
                )
                if not mine:
                    values[key] = None
                elif len(mine) == 1 and mine[0][1] is not None:
                    values[key] = Value(quantity=mine[0][1])
        return values


def _shape(settings: MarketplacerSettings, key: str | None) -> Shape:
    locations = None
    if settings.seller_map is not None:
        locations = {warehouse: str(seller) for warehouse, seller in settings.seller_map.items()}
    return Shape(key_parts=(key or "{sku}",), locations=locations)


def _build(settings: MarketplacerSettings, context: ChannelContext) -> Channel:
    return MarketplacerChannel(settings, context)


SPEC = ChannelSpec(
    settings=MarketplacerSettings,
    max_batch=MarketplacerChannel.max_batch,
    shape=_shape,
    build=_build,
    default_rate="50/s",
    default_batch=25,
    requires_key=True,
)
