"""Answers are read with a ceiling: a huge body or a gzip bomb is a retryable error, not an OOM."""

from __future__ import annotations

import gzip
import tracemalloc
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry

from adapters._http import send
from daemon.config.settings import KeycrmSettings
from daemon.core.bodies import MAX_BODY_BYTES
from daemon.core.errors import ChannelRetryable
from daemon.core.telemetry import Metrics
from daemon.keycrm.budget import RequestBudget
from daemon.keycrm.client import CATALOG_PAGE_BYTES, STOCK_PAGE_BYTES, KeycrmClient
from daemon.simulator import FakeInventoryApi, FakeKeycrm
from tests.conftest import Serve

pytestmark = pytest.mark.anyio

#: 64 MiB of zeros, about 64 KiB on the wire.
BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


async def push(url: str, token: str) -> None:
    async with aiohttp.ClientSession() as session:
        await send(
            session,
            "POST",
            f"{url}/api/product/inventory",
            channel="pos",
            payload={"upc": "1", "store": "S1", "quantity": 1},
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=30),
        )


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"x" * (MAX_BODY_BYTES + 1), {}),
        (BOMB, {"Content-Encoding": "gzip"}),
    ],
    ids=["large", "gzip-bomb"],
)
async def test_a_channel_answer_over_the_limit_is_retryable_and_names_it(
    serve: Serve, body: bytes, headers: dict[str, str]
) -> None:
    fake = FakeInventoryApi("pos-token-0123")
    url = await serve(fake.app())
    fake.faults.add(500, body=body, headers=headers)
    tracemalloc.start()
    try:
        with pytest.raises(ChannelRetryable, match="larger than 10 MiB") as caught:
            await push(url, fake.token)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.retry_after is None
    # The fake holds the body it sends; what we read stays near the limit, never the whole bomb.
    assert peak < len(body) + 2 * MAX_BODY_BYTES + 8 * 1024 * 1024
    await push(url, fake.token)  # the next answer is normal again


async def test_a_keycrm_gzip_bomb_is_counted_and_retried(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeKeycrm("kc-bodies-key-0123")
    fake.populate(60)
    fake.faults.add(0, body=BOMB, headers={"Content-Encoding": "gzip"})
    url = await serve(fake.app())
    monkeypatch.setenv("T_KC", fake.api_key)
    settings = KeycrmSettings.model_validate({"base_url": f"{url}/v1", "api_key_env": "T_KC"})
    metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", [])
    async with aiohttp.ClientSession() as session:
        client = KeycrmClient(settings, session, RequestBudget(6000), metrics, details=False)
        skus = [level.sku async for page in client.scan() for level in page.items]
    assert len(skus) == 60
    too_large = metrics.registry.get_sample_value(
        "stocksync_keycrm_requests_total",
        {"merchant": "default", "kind": "scan", "status": "too_large"},
    )
    assert too_large == 1


def heavy_page(size: int, *, catalog: bool) -> bytes:
    """A page of 50 offers that weighs about `size` bytes as JSON, in the shape that costs the
    most memory per byte: each offer carries many tiny values (warehouse rows; properties)."""

    def offer(n: int, rows: int) -> dict[str, Any]:
        if catalog:
            extra: dict[str, Any] = {"properties": [{"name": "p", "value": "v"}] * rows}
            extra["product"] = {"id": n, "name": f"Product {n}"}
        else:
            extra = {"warehouse": [{"id": 1, "quantity": 1, "reserve": 0}] * rows}
        return {"id": n, "sku": f"HEAVY-{n}", "price": 1, "quantity": 1, "reserve": 0, **extra}

    def page(rows: int) -> bytes:
        data = [offer(n, rows) for n in range(1, 51)]
        return orjson.dumps(
            {"current_page": 1, "last_page": 1, "total": 50, "next_page_url": None, "data": data}
        )

    one_row = len(page(2)) - len(page(1))  # one more row in each offer
    body = page(1 + (size - len(page(1))) // one_row)
    assert size - one_row < len(body) <= size
    return body


async def peak_of_one_pass(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, body: bytes, *, catalog: bool
) -> tuple[int, float]:
    """Peak traced memory while the client reads `body` as the first page of a scan (or
    catalog pass) and how many of its answers were too large; the fake answers normally
    after it."""
    fake = FakeKeycrm("kc-heavy-key-0123")
    fake.populate(3)
    fake.faults.add(0, body=body)
    url = await serve(fake.app())
    monkeypatch.setenv("T_KC", fake.api_key)
    settings = KeycrmSettings.model_validate({"base_url": f"{url}/v1", "api_key_env": "T_KC"})
    metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", [])
    async with aiohttp.ClientSession() as session:
        client = KeycrmClient(settings, session, RequestBudget(6000), metrics, details=True)
        pages = client.catalog() if catalog else client.scan()
        tracemalloc.start()
        try:
            async for _ in pages:
                pass
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    kind = "catalog" if catalog else "scan"
    too_large = metrics.registry.get_sample_value(
        "stocksync_keycrm_requests_total",
        {"merchant": "default", "kind": kind, "status": "too_large"},
    )
    return peak, too_large or 0.0


MiB = 1024 * 1024


@pytest.mark.parametrize("catalog", [False, True], ids=["stock", "catalog"])
async def test_a_keycrm_page_costs_a_bounded_share_of_memory(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, catalog: bool
) -> None:
    """A page holds at most 50 offers: its ceiling is what 50 offers can honestly weigh, and
    the heaviest page under it, decoded offer by offer, costs under ten times its size (its
    text, its records, one offer's values at a time; the fake's sending included). At the old
    10 MiB ceiling, decoded whole, one such page cost 190 MiB (stock) and 250 MiB (catalog)."""
    limit = CATALOG_PAGE_BYTES if catalog else STOCK_PAGE_BYTES
    peak, too_large = await peak_of_one_pass(
        serve, monkeypatch, heavy_page(limit, catalog=catalog), catalog=catalog
    )
    assert too_large == 0  # a page at the ceiling is read
    assert peak < 10 * limit + 4 * MiB, f"{peak / MiB:.0f} MiB"
    heavy = heavy_page(10 * MiB - 4096, catalog=catalog)
    peak, too_large = await peak_of_one_pass(serve, monkeypatch, heavy, catalog=catalog)
    assert too_large == 1  # refused before it is parsed, and asked again
    # The fake's sending holds about the body; what the client reads stays near the ceiling.
    assert peak < len(heavy) + 2 * limit + 8 * MiB, f"{peak / MiB:.0f} MiB"
