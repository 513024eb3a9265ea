"""The whole daemon over real HTTP: fake keyCRM in, fake Inventory Update APIs out."""

from __future__ import annotations

import aiohttp
import anyio
import pytest

from daemon.send import dispatch
from daemon.shell.daemon import Daemon
from tests.conftest import World, channel_idle, eventually, idle, running

pytestmark = pytest.mark.anyio


def available(world: World, sku: str) -> int:
    offer = world.keycrm.by_sku(sku)
    return max(0, int(offer.quantity - offer.reserve))


def in_sync(world: World, shop: str = "pos", store: str = "S1") -> bool:
    fake = world.shops[shop]
    return all(
        fake.quantity(o.barcode or "", store) == available(world, o.sku or "")
        for o in world.keycrm.offers.values()
    )


async def test_first_full_sync_of_a_few_hundred_skus(world: World) -> None:
    world.keycrm.populate(300)
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon), what="every SKU pushed")
        status = await daemon.status()
    assert len(world.shops["pos"].stock) == 300
    assert status["channels"]["pos"]["pending"] == 0
    assert status["channels"]["pos"]["acknowledged"] == 300
    assert status["source"]["scans_completed"] >= 1


async def test_a_webhook_change_propagates_ahead_of_the_scan(world: World) -> None:
    world.keycrm.populate(20)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon), aiohttp.ClientSession() as session:
        await eventually(lambda: in_sync(world))
        world.keycrm.set_stock("SKU-00007", 3, 1)
        url = f"http://127.0.0.1:{daemon.bound_port}/webhooks/keycrm/{world.webhook_token}"
        payload = [{"offer_id": 1007, "sku": "SKU-00007", "in_stock": 3, "in_reserve": 1}]
        async with session.post(url, json=payload) as response:
            assert response.status == 202
        await eventually(lambda: pos.quantity("400000000007", "S1") == 2)
    lookups = [q for _, _, q in world.keycrm.requests if "filter[offers_sku]" in q]
    assert lookups == [{"limit": "50", "page": "1", "filter[offers_sku]": "SKU-00007"}]


async def test_ten_rapid_changes_through_a_slow_channel_end_with_the_last_value(
    world: World,
) -> None:
    world.keycrm.populate(1)
    pos = await world.add_shop("pos")
    config = world.config(sync='debounce = "200ms"\nmax_delay = "2s"')
    daemon = Daemon(config, handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world))
        before = len(pos.requests)
        pos.faults.delay = 0.3  # a slow channel
        assert daemon.parts is not None
        for quantity in range(10, 20):
            world.keycrm.set_stock("SKU-00001", quantity)
            # what a webhook look-up would do, without waiting for the network each time
            levels = (await daemon.parts.client.lookup(["SKU-00001"])).levels
            assert daemon.store is not None
            changed = await daemon.store.save_stock(levels, None)
            await daemon.parts.reconciler.ingest(changed)
            await anyio.sleep(0.03)
        await eventually(lambda: pos.quantity("400000000001", "S1") == 19)
        await anyio.sleep(0.5)  # nothing else may follow the last value
    pushes = pos.requests[before:]
    assert pushes[-1]["quantity"] == 19
    assert len(pushes) <= 3
    assert pos.max_in_flight == 1  # at most one request per item at a time


async def test_a_rejected_item_does_not_block_the_others(world: World) -> None:
    world.keycrm.populate(30)
    pos = await world.add_shop("pos")
    pos.known = {o.barcode or "" for o in world.keycrm.offers.values()} - {"400000000005"}
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: len(pos.stock) == 29)
        await eventually(
            lambda: (
                daemon.metrics.registry.get_sample_value(
                    "stocksync_push_requests_total",
                    {"merchant": "default", "channel": "pos", "outcome": "rejected"},
                )
                == 1
            )
        )
        await eventually(lambda: idle(daemon))
        status = await daemon.status()
        items = await daemon.store.items("pos")  # type: ignore[union-attr]
    assert status["channels"]["pos"]["rejected"] == 1
    assert status["channels"]["pos"]["pending"] == 0
    (rejected,) = [i for i in items if i.status == "rejected"]
    assert "Product not found" in (rejected.last_error or "")


async def test_an_auth_failure_pauses_only_that_channel(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "PROBE_BASE", 0.2)
    monkeypatch.setattr(dispatch, "PROBE_CAP", 0.4)
    world.keycrm.populate(10)
    good = await world.add_shop("good")
    bad = await world.add_shop("bad")
    token = bad.token
    bad.token = "rotated-by-the-merchant"
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: len(good.stock) == 10 and channel_idle(daemon, "good"))
        await eventually(lambda: up(daemon, "bad") == 0)
        status = await daemon.status()
        assert status["channels"]["bad"]["up"] is False
        assert status["channels"]["bad"]["pending"] == 10
        assert "401" in status["channels"]["bad"]["last_error"]
        assert status["channels"]["good"]["pending"] == 0
        probes = len(bad.requests)
        bad.token = token  # the merchant fixes the token; the next probe resumes the channel
        await eventually(lambda: len(bad.stock) == 10)
    assert up(daemon, "bad") == 1
    assert probes <= 8 + 2  # in-flight stragglers, then one probe at a time


def up(daemon: Daemon, channel: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(
        "stocksync_channel_up", {"merchant": "default", "channel": channel}
    )


async def test_retry_after_pauses_the_channel_then_everything_lands(world: World) -> None:
    world.keycrm.populate(5)
    pos = await world.add_shop("pos")
    pos.faults.add(429, body=b'{"error": "slow down"}', retry_after="1")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(
            lambda: (
                daemon.parts is not None and daemon.parts.dispatchers["pos"].health.paused_until > 0
            )
        )
        dispatcher = daemon.parts.dispatchers["pos"]  # type: ignore[union-attr]
        await eventually(lambda: dispatcher.in_flight == 0)  # under way may finish
        paused_at = pos.arrivals
        await anyio.sleep(0.5)
        assert pos.arrivals == paused_at  # nothing new is sent while paused
        await eventually(lambda: in_sync(world), timeout=10)
    retries = daemon.metrics.registry.get_sample_value(
        "stocksync_push_requests_total",
        {"merchant": "default", "channel": "pos", "outcome": "retry"},
    )
    assert retries == 1


async def test_store_map_pushes_one_update_per_store_from_warehouse_stock(world: World) -> None:
    world.keycrm.populate(6, warehouses=(1, 2, 3))
    pos = await world.add_shop("pos")
    channels = world.shop_table("pos", 'store_map = { "1" = "A", "2" = "B" }')
    daemon = Daemon(world.config(channels=channels), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: len(pos.stock) == 12)
    assert all(
        q["filter[details]"] == "true" for _, p, q in world.keycrm.requests if p.endswith("stocks")
    )
    for offer in world.keycrm.offers.values():
        for warehouse, store in ((1, "A"), (2, "B")):
            quantity, reserve = offer.stock[warehouse]
            assert pos.quantity(offer.barcode or "", store) == max(0, int(quantity - reserve))


async def test_sku_size_width_matching_uses_keycrm_properties(world: World) -> None:
    world.keycrm.populate(4)
    world.keycrm.by_sku("SKU-00002").properties = {"Width": "D"}  # no size: skipped, counted
    pos = await world.add_shop("pos")
    channels = world.shop_table("pos", 'store = "9"\nmatch = "sku_size_width"')
    daemon = Daemon(world.config(channels=channels), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: len(pos.stock) == 3)
    assert pos.requests[0].keys() == {"sku", "size", "width", "store", "quantity"}
    offer = world.keycrm.by_sku("SKU-00001")
    assert pos.quantity("SKU-00001", "9", offer.properties["Size"], "D") == available(
        world, "SKU-00001"
    )
    skipped = daemon.metrics.registry.get_sample_value(
        "stocksync_records_skipped_total",
        {"merchant": "default", "channel": "pos", "reason": "empty_key"},
    )
    assert skipped == 1
