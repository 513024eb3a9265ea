"""A fake Marketplacer Seller API: GraphQL `variantUpdate` and the legacy REST inventories route.

Auth as Marketplacer documents it: `marketplacer-api-key` or `Authorization: Bearer`, never both
(400), optionally behind HTTP Basic (then the key must be in `marketplacer-api-key`); a wrong key
is `401 API Token has expired`. The GraphQL route accepts documents of aliased
`variantUpdate(input: $var)` mutations (parsed strictly, not executed by a GraphQL engine),
answers `errors { field messages }` per alias for unknown variants, and `MISSING_SCOPE` as a
top-level error when the key lacks the scope. A failure inside a 200 (`faults.fail_in_body`, or
`failing` for one variant) is a top-level error whose path names the alias (GraphQL) or a JSON:API
`errors` document (REST), and changes nothing.

Read-back as documented: `query ($ids: [ID!]!) { nodes(ids: $ids) { ... on Variant { id
countOnHand } } }` answers the nodes in the order asked, null for a variant the seller cannot see;
`GET /api/v2/client/variants/{id}/inventories` answers the JSON:API records, 404 for an unknown
variant. `edit_by_hand` changes a count the way a person in the seller portal would, so tests and
the demo can create drift.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from daemon.simulator.faults import Faults

__all__ = ["FakeMarketplacer", "variant_id"]

_DOCUMENT = re.compile(r"^\s*mutation\s+\w*\s*\((?P<vars>[^)]*)\)\s*\{(?P<body>.*)\}\s*$", re.S)
_VARIABLE = re.compile(r"\$(\w+)\s*:\s*VariantUpdateMutationInput!")
_FIELD = re.compile(
    r"(\w+)\s*:\s*variantUpdate\s*\(\s*input\s*:\s*\$(\w+)\s*\)\s*\{\s*variant\s*\{\s*id\s+"
    r"countOnHand\s*\}\s*errors\s*\{\s*field\s+messages\s*\}\s*\}"
)

_READ = re.compile(
    r"^\s*query\s*\w*\s*\(\s*\$(?P<var>\w+)\s*:\s*\[ID!\]!\s*\)\s*\{\s*nodes\s*\(\s*ids\s*:"
    r"\s*\$(?P<use>\w+)\s*\)\s*\{\s*\.\.\.\s*on\s+Variant\s*\{\s*id\s+countOnHand\s*\}\s*\}\s*\}\s*$",
    re.S,
)


def variant_id(legacy_id: int) -> str:
    """The Relay global id Marketplacer gives variant `legacy_id`: base64("Variant-<id>")."""
    return base64.b64encode(f"Variant-{legacy_id}".encode()).decode()


def _inventory_updates(body: bytes) -> list[tuple[int | None, int]] | None:
    """(seller id, count) pairs from a JSON:API inventories document, or None if malformed."""
    try:
        records = orjson.loads(body)["data"]
        updates = []
        for record in records:
            attributes = record["attributes"]
            count = attributes["count_on_hand"]
            if record.get("type", "inventories") != "inventories" or not isinstance(count, int):
                return None
            updates.append((attributes.get("seller_id"), count))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return updates


class FakeMarketplacer:
    """The fake; `count_on_hand` is variant global id -> count, `inventories` is (legacy id,
    seller id or None) -> count for the REST route; `known` limits which variants exist."""

    def __init__(self, api_key: str, *, basic: tuple[str, str] | None = None) -> None:
        self.api_key = api_key
        self.basic = basic
        #: variants whose input the server cannot coerce: GraphQL refuses the whole document
        #: with an error that has no path (graphql-ruby's variable errors); REST answers 422
        self.poison: set[str] = set()
        #: variant -> message: its update fails inside a 200 (GraphQL: an error whose path names
        #: its alias, the other aliases applied; REST: a JSON:API errors document), unapplied
        self.failing: dict[str, str] = {}
        self.count_on_hand: dict[str, int] = {}
        self.inventories: dict[tuple[str, int | None], int] = {}
        self.known: set[str] | None = None
        self.scope_ok = True
        self.documents: list[dict[str, Any]] = []
        self.faults = Faults()
        self.on_update: Callable[[str, int], None] | None = None
        #: monotonic times of read-back requests (GraphQL `nodes` and REST GETs)
        self.reads: list[float] = []

    def edit_by_hand(self, variant: str, count: int, *, seller: int | None = None) -> None:
        """Set a count as a person in the seller portal would: no API call, nothing logged.

        With `seller`, or for a variant the REST route holds, the multi-store inventory record;
        else the variant's own `countOnHand` (GraphQL).
        """
        if seller is not None or any(v == variant for v, _ in self.inventories):
            self.inventories[(variant, seller)] = count
        else:
            self.count_on_hand[variant] = count

    def _auth(self, request: web.Request) -> web.Response | None:
        header_key = request.headers.get("marketplacer-api-key")
        authorization = request.headers.get("Authorization", "")
        if self.basic is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic).encode()).decode()
            if authorization != expected:
                return web.Response(status=401, text="Unauthorized")
            bearer = None
        else:
            bearer = (
                authorization.removeprefix("Bearer ")
                if authorization.startswith("Bearer ")
                else None
            )
        if header_key is not None and bearer is not None:
            return web.json_response(
                {"errors": [{"message": "send the key in one header, never both"}]}, status=400
            )
        if (header_key or bearer) != self.api_key:
            return web.json_response({"errors": [{"message": "API Token has expired"}]}, status=401)
        return None

    async def graphql(self, request: web.Request) -> web.Response:
        refusal = self._auth(request)
        if refusal is not None:
            return refusal
        fault = await self.faults.answer()
        if fault is not None:
            return fault
        try:
            payload = orjson.loads(await request.read())
            query, variables = payload["query"], payload.get("variables") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.json_response({"errors": [{"message": "Invalid request body"}]}, status=400)
        self.documents.append(payload)
        if not self.scope_ok:
            return web.json_response(
                {
                    "data": None,
                    "errors": [
                        {
                            "message": "The API key is missing the required scope",
                            "extensions": {"code": "MISSING_SCOPE"},
                        }
                    ],
                }
            )
        failure = self.faults.body_failure()
        if isinstance(query, str) and query.lstrip().startswith("query"):
            if failure is not None:
                return web.json_response({"data": None, "errors": [{"message": failure}]})
            return self._read(query, variables)
        document = _DOCUMENT.match(query)
        declared = set(_VARIABLE.findall(document.group("vars"))) if document else set()
        fields = _FIELD.findall(document.group("body")) if document else []
        leftover = _FIELD.sub("", document.group("body")).strip() if document else "?"
        if not document or not fields or leftover or any(v not in declared for _, v in fields):
            return web.json_response({"errors": [{"message": "Parse error on query document"}]})
        for _, variable in fields:
            given = variables.get(variable)
            if isinstance(given, dict) and given.get("variantId") in self.poison:
                message = (
                    f"Variable ${variable} of type VariantUpdateMutationInput! was provided "
                    "invalid value for variantId (Could not coerce value to ID)"
                )
                problems = [{"path": ["variantId"], "explanation": "Could not coerce value"}]
                error = {
                    "message": message,
                    "locations": [{"line": 1, "column": 10}],
                    "extensions": {"value": given, "problems": problems},
                }
                return web.json_response({"errors": [error]})
        data: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        for alias, variable in fields:
            given = variables.get(variable)
            variant = given.get("variantId") if isinstance(given, dict) else None
            failed = failure or self.failing.get(str(variant))
            if failed is not None:
                # graphql-ruby's shape for a field whose resolver failed: null data, an error
                # whose path names the field, and the other fields resolved as usual
                data[alias] = None
                errors.append({"message": failed, "locations": [], "path": [alias]})
                continue
            data[alias] = self._variant_update(given)
        return web.json_response({"data": data, "errors": errors} if errors else {"data": data})

    def _read(self, query: str, variables: Any) -> web.Response:
        self.reads.append(time.monotonic())
        document = _READ.match(query)
        if document is None or document.group("var") != document.group("use"):
            return web.json_response({"errors": [{"message": "Parse error on query document"}]})
        ids = variables.get(document.group("var")) if isinstance(variables, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            message = "Variable $ids of type [ID!]! was provided invalid value"
            return web.json_response({"errors": [{"message": message}]})
        return web.json_response({"data": {"nodes": [self._node(i) for i in ids]}})

    def _node(self, variant: str) -> dict[str, Any] | None:
        """A variant the seller can see, or null (Marketplacer scopes nodes to the seller)."""
        if self.known is not None and variant not in self.known:
            return None
        count = self.count_on_hand.get(variant)
        if count is None and self.known is None:
            return None
        return {"id": variant, "countOnHand": count or 0}

    async def inventories_get(self, request: web.Request) -> web.Response:
        refusal = self._auth(request)
        if refusal is not None:
            return refusal
        fault = await self.faults.answer()
        if fault is not None:
            return fault
        self.reads.append(time.monotonic())
        variant = request.match_info["variant"]
        held = [(s, c) for (v, s), c in self.inventories.items() if v == variant]
        known = variant in self.known if self.known is not None else bool(held)
        if not known:
            return web.json_response(
                {"errors": [{"status": "404", "title": "Not Found"}]}, status=404
            )
        data = [
            {
                "id": n,
                "type": "inventories",
                "attributes": {"count_on_hand": c, "infinite": False, "seller_id": s},
            }
            for n, (s, c) in enumerate(held, start=1)
        ]
        return web.Response(
            body=orjson.dumps({"data": data}), content_type="application/vnd.api+json"
        )

    def _variant_update(self, given: Any) -> dict[str, Any]:
        if not isinstance(given, dict) or not isinstance(given.get("variantId"), str):
            return {
                "variant": None,
                "errors": [{"field": "variantId", "messages": ["is required"]}],
            }
        variant = given["variantId"]
        count = (given.get("attributes") or {}).get("countOnHand")
        if not isinstance(count, int) or count < 0:
            return {
                "variant": None,
                "errors": [{"field": "countOnHand", "messages": ["must be a whole number >= 0"]}],
            }
        if self.known is not None and variant not in self.known:
            return {"variant": None, "errors": [{"field": "variantId", "messages": ["not found"]}]}
        self.count_on_hand[variant] = count
        if self.on_update is not None:
            self.on_update(variant, count)
        return {"variant": {"id": variant, "countOnHand": count}, "errors": []}

    async def inventories_put(self, request: web.Request) -> web.Response:
        refusal = self._auth(request)
        if refusal is not None:
            return refusal
        fault = await self.faults.answer()
        if fault is not None:
            return fault
        variant = request.match_info["variant"]
        failure = self.faults.body_failure() or self.failing.get(variant)
        if failure is not None:  # a JSON:API errors document, under a 200: nothing applied
            body = {"errors": [{"status": "500", "title": failure}]}
            return web.Response(body=orjson.dumps(body), content_type="application/vnd.api+json")
        if variant in self.poison:
            return web.json_response(
                {"errors": [{"status": "422", "title": "Invalid inventories document"}]}, status=422
            )
        if self.known is not None and variant not in self.known:
            return web.json_response(
                {"errors": [{"status": "404", "title": "Not Found"}]}, status=404
            )
        updates = _inventory_updates(await request.read())
        if updates is None:
            return web.json_response(
                {"errors": [{"status": "422", "title": "Invalid inventories document"}]}, status=422
            )
        for seller, count in updates:
            self.inventories[(variant, seller)] = count
            if self.on_update is not None:
                self.on_update(variant, count)
        data = [
            {"id": n, "type": "inventories", "attributes": {"count_on_hand": c, "seller_id": s}}
            for n, (s, c) in enumerate(updates, start=1)
        ]
        return web.Response(
            body=orjson.dumps({"data": data}), content_type="application/vnd.api+json"
        )

    async def variants_get(self, request: web.Request) -> web.Response:
        """REST look-up of variants by external id: this fake knows none, so an empty list."""
        refusal = self._auth(request)
        if refusal is not None:
            return refusal
        return web.Response(body=b'{"data": []}', content_type="application/vnd.api+json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/graphql", self.graphql)
        app.router.add_get("/api/v2/client/variants", self.variants_get)
        app.router.add_put("/api/v2/client/variants/{variant}/inventories", self.inventories_put)
        app.router.add_get("/api/v2/client/variants/{variant}/inventories", self.inventories_get)
        return app
