"""The fake keyCRM pages a big catalog without sorting it per request, yet always in id order."""

from __future__ import annotations

import aiohttp
import pytest

from daemon.simulator import FakeKeycrm, FakeOffer
from tests.conftest import Serve

pytestmark = pytest.mark.anyio


async def page_ids(base: str, page: int) -> tuple[int, list[int]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{base}/v1/offers/stocks",
            params={"limit": "50", "page": str(page)},
            headers={"Authorization": "Bearer k"},
        ) as response,
    ):
        body = await response.json()
    return body["total"], [row["id"] for row in body["data"]]


async def test_pages_follow_every_change_to_the_offers(serve: Serve) -> None:
    keycrm = FakeKeycrm("k")
    keycrm.populate(120)
    base = await serve(keycrm.app())
    assert await page_ids(base, 3) == (120, list(range(1101, 1121)))

    del keycrm.offers[1101]
    keycrm.add(FakeOffer(id=5, sku="FIRST", product_id=1, product_name="First"))
    keycrm.offers.pop(1120)
    keycrm.offers[2000] = FakeOffer(id=2000, sku="LAST", product_id=9, product_name="Last")
    total, ids = await page_ids(base, 3)
    assert total == 120
    assert ids == [1100, *range(1102, 1120), 2000]
    assert (await page_ids(base, 1))[1][0] == 5
