"""The fake keyCRM and our client against keyCRM's own OpenAPI document.

The document (version 1.2.0, as keyCRM publishes it for https://openapi.keycrm.app/v1) is kept
in tests/reference, so every checkout and CI runs these checks; where the shared reference
folder sits beside the checkout, the kept copy must equal it.

What the client sends must be parameters the routes accept; what the fake answers must have the
spec's field names and types (plus the live-only fields the reference documents: `last_page`, and
`in_reserve` on `/offers`), so the tests exercise the real shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import Serve

pytestmark = pytest.mark.anyio

SPEC = Path(__file__).parents[1] / "reference" / "keycrm-openapi.yml"
SHARED = Path(__file__).parents[3] / "shared" / "reference" / "keycrm-openapi.yml"
LIVE_ONLY = {"/offers": {"in_reserve"}, "envelope": {"last_page", "prev_page_url"}}
TYPES = {"integer": int, "number": (int, float), "string": str, "array": list, "object": dict}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if SHARED.exists():
        assert SHARED.read_bytes() == SPEC.read_bytes(), f"refresh {SPEC} from {SHARED}"
    document: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return document


def parameters(spec: dict[str, Any], path: str) -> set[str]:
    """Query keys the route accepts, deep-object filters expanded from the spec's examples."""
    accepted = set()
    for declared in spec["paths"][path]["get"]["parameters"]:
        parameter = declared
        if "$ref" in declared:
            parameter = spec["components"]["parameters"][declared["$ref"].rsplit("/", 1)[1]]
        if parameter.get("in") == "header":
            continue
        if parameter.get("style") == "deepObject":
            for example in parameter.get("examples", {}).values():
                accepted.update(f"{parameter['name']}[{key}]" for key in example["value"])
        else:
            accepted.add(parameter["name"])
    return accepted


def check(
    value: Any, schema: dict[str, Any], spec: dict[str, Any], where: str, extra: set[str]
) -> None:
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if value is None:
        return  # nullable in practice (barcode, thumbnail_url...)
    kind = schema.get("type")
    if kind in TYPES:
        assert isinstance(value, TYPES[kind]), f"{where}: {value!r} is not {kind}"
    if isinstance(value, dict) and "properties" in schema:
        unknown = set(value) - set(schema["properties"]) - extra
        assert not unknown, f"{where}: fields not in the spec: {unknown}"
        for key, item in value.items():
            if key in schema["properties"]:
                check(item, schema["properties"][key], spec, f"{where}.{key}", set())
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check(item, schema["items"], spec, f"{where}[{index}]", extra)


async def test_the_client_sends_only_parameters_the_spec_accepts(
    spec: dict[str, Any], world: Any
) -> None:
    from daemon.shell.daemon import Daemon
    from tests.conftest import eventually, running

    world.keycrm.populate(60, warehouses=(1, 2))
    await world.add_shop("pos")
    channels = world.shop_table("pos", 'store_map = { "1" = "A" }')
    daemon = Daemon(world.config(channels=channels, order_feed="100ms"), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: len(world.shops["pos"].stock) == 60)
        await daemon.webhook("default", ["SKU-00001", "SKU-00002"])
        await eventually(
            lambda: any("filter[offers_sku]" in q for _, _, q in world.keycrm.requests)
        )
        world.keycrm.orders.place([(world.keycrm.by_sku("SKU-00003"), 1)])
        await eventually(
            lambda: (
                daemon.metrics.registry.get_sample_value(
                    "stocksync_order_feed_skus_total", {"merchant": "default"}
                )
                == 1
            )
        )
    assert any(path == "/v1/order" for _, path, _ in world.keycrm.requests)
    for _, path, query in world.keycrm.requests:
        route = path.removeprefix("/v1")
        unknown = set(query) - parameters(spec, route)
        assert not unknown, f"{route}: {unknown} is not a parameter of the spec"


async def test_the_fake_answers_in_the_specs_shapes(spec: dict[str, Any], serve: Serve) -> None:
    from daemon.simulator import FakeKeycrm

    fake = FakeKeycrm("k" * 16)
    fake.populate(3, warehouses=(1, 2))
    for offer in fake.offers.values():
        fake.orders.place([(offer, 1)])
    base = await serve(fake.app())
    headers = {"Authorization": "Bearer " + "k" * 16}
    envelope = spec["components"]["schemas"]["PaginatedResponse"]
    routes = {
        "/offers/stocks": ({"filter[details]": "true", "limit": "2"}, "OfferStocks"),
        "/offers": ({"include": "product", "limit": "2"}, "Offer"),
        "/order": ({"include": "products.offer", "limit": "2"}, "OrderWithIncludes"),
    }
    async with aiohttp.ClientSession() as session:
        for route, (query, schema_name) in routes.items():
            async with session.get(f"{base}/v1{route}", params=query, headers=headers) as response:
                assert response.status == 200
                body = await response.json()
            check(body, envelope, spec, route, LIVE_ONLY["envelope"])
            row_schema = {"$ref": f"#/components/schemas/{schema_name}"}
            for index, row in enumerate(body["data"]):
                check(row, row_schema, spec, f"{route}.data[{index}]", LIVE_ONLY.get(route, set()))
                if route == "/order":  # the lines and their offers, as `include` asked
                    assert row["products"][0]["offer"]["sku"].startswith("SKU-")
            assert body["next_page_url"].endswith("?page=2")  # only the page, as documented
        async with session.get(
            f"{base}/v1/offers/stocks", params={"limit": "51"}, headers=headers
        ) as response:
            assert response.status == 422  # limit is at most 50
