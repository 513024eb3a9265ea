"""The order feed in the daemon: sales reach the channels with no webhook and no scan, a kill
loses none, a restart continues from the stored watermark, and a keyCRM that refuses `/order`
turns the feed off while everything else goes on."""

from __future__ import annotations

import time

import anyio
import orjson
import pytest
import structlog

from daemon.commands.statusview import render
from daemon.keycrm.client import keycrm_time
from daemon.keycrm.feed import STATE_KEY
from daemon.shell.daemon import Daemon
from daemon.store import open_store
from tests.conftest import World, eventually, running
from tests.integration.test_restart import run_cli
from tests.integration.test_sync import available, in_sync
from tests.integration.test_webhook_durability import lookups_of

pytestmark = pytest.mark.anyio


def polls(world: World) -> list[dict[str, str]]:
    return [q for _, path, q in world.keycrm.requests if path == "/v1/order"]


async def test_sales_reach_every_channel_within_the_interval_with_no_webhook_and_no_scan(
    world: World,
) -> None:
    world.keycrm.populate(20)
    await world.add_shop("pos")
    await world.add_shop("web")
    daemon = Daemon(world.config(order_feed="1s"), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world, "pos") and in_sync(world, "web"))
        world.keycrm.scan_gate = anyio.Event()  # a scan from now on would take for ever
        try:
            sold = [world.keycrm.by_sku("SKU-00003"), world.keycrm.by_sku("SKU-00011")]
            world.keycrm.orders.place([(sold[0], 2), (sold[1], 1)])
            placed = time.monotonic()
            # order_feed_interval 1 s + debounce 0 s + a few seconds
            await eventually(lambda: in_sync(world, "pos") and in_sync(world, "web"), timeout=4)
            assert time.monotonic() - placed < 4
            status = (await daemon.status())["source"]["order_feed"]
            lag = daemon.metrics.registry.get_sample_value(
                "stocksync_order_feed_lag_seconds", {"merchant": "default"}
            )
        finally:
            world.keycrm.scan_gate.set()
    accepted = daemon.metrics.registry.get_sample_value(
        "stocksync_webhook_events_total", {"outcome": "accepted"}
    )
    assert accepted == 0  # the feed carried the sale, not a webhook
    assert status["state"] in ("waiting", "polling")
    assert status["orders_seen"] == 1
    assert status["skus_queued"] == 2
    assert status["lag_seconds"] < 5
    assert lag is not None and 0 < lag < 5
    assert all(q["filter[updated_between]"].count(":") == 4 for q in polls(world))


async def test_a_watermark_from_before_a_restart_is_honoured(world: World) -> None:
    """An hour-old watermark and an order half an hour old: with no overlap, only the stored
    watermark reaches it (a feed starting from now would not)."""
    world.keycrm.populate(5)
    await world.add_shop("pos")
    now = time.time()
    store = open_store(world.tmp_path / "state.db")
    await store.set_meta(STATE_KEY, orjson.dumps({"watermark": now - 3600, "seen": {}}).decode())
    await store.close()
    world.keycrm.scan_gate = anyio.Event()  # no scan: only the feed can carry the sale
    offer = world.keycrm.by_sku("SKU-00004")
    world.keycrm.orders.place([(offer, 3)], at=now - 1800)
    config = world.config(order_feed="200ms", keycrm='order_feed_overlap = "0s"')
    daemon = Daemon(config, handle_signals=False)
    try:
        async with running(daemon):
            shop = world.shops["pos"]
            await eventually(
                lambda: shop.quantity(offer.barcode or "", "S1") == available(world, "SKU-00004")
            )
            assert polls(world)[0]["filter[updated_between]"].startswith(keycrm_time(now - 3600))
            await eventually(lambda: len(polls(world)) >= 2)
    finally:
        world.keycrm.scan_gate.set()
    store = open_store(world.tmp_path / "state.db")
    saved = orjson.loads(await store.get_meta(STATE_KEY) or "{}")
    await store.close()
    assert saved["watermark"] >= now  # moved on, and kept for the next start


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_refused_order_route_turns_the_feed_off_and_the_rest_goes_on(
    world: World, status: int
) -> None:
    world.keycrm.populate(5)
    await world.add_shop("pos")
    world.keycrm.orders.refusal = status
    daemon = Daemon(world.config(order_feed="100ms"), handle_signals=False)
    with structlog.testing.capture_logs() as logs:
        async with running(daemon):
            await eventually(lambda: in_sync(world))
            await eventually(lambda: daemon.parts is not None and daemon.parts.feed is not None)
            assert daemon.parts is not None and daemon.parts.feed is not None
            feed = daemon.parts.feed
            await eventually(lambda: feed.progress.state == "refused")
            await anyio.sleep(0.5)  # five intervals: no second request
            world.keycrm.set_stock("SKU-00002", 17)
            await daemon.webhook("default", ["SKU-00002"])  # webhooks still work
            await eventually(lambda: in_sync(world))
            data = await daemon.status()
    assert len(polls(world)) == 1
    up = daemon.metrics.registry.get_sample_value(
        "stocksync_order_feed_up", {"merchant": "default"}
    )
    assert up == 0
    # a key without order access is not keyCRM down: stock flows on
    assert (
        daemon.metrics.registry.get_sample_value("stocksync_keycrm_up", {"merchant": "default"})
        == 1
    )
    off = [e for e in logs if e["event"] == "keycrm.order_feed_off"]
    assert len(off) == 1
    assert off[0]["log_level"] == "error"
    assert off[0]["status"] == str(status)
    assert "order feed OFF, refused by keyCRM: keyCRM" in render(data, time.time())
    assert str(status) in data["source"]["order_feed"]["last_error"]


async def test_a_sigkill_between_a_poll_and_its_lookups_loses_no_sale(world: World) -> None:
    world.keycrm.populate(5)
    await world.add_shop("pos")
    path = world.write_config(order_feed="200ms")
    first = await run_cli("run", "-c", str(path))
    try:
        await eventually(lambda: in_sync(world), timeout=20)
        world.keycrm.scan_gate = anyio.Event()  # from now on only look-ups read stock
        world.keycrm.lookup_gate = anyio.Event()  # and they hang until the kill
        world.keycrm.orders.place([(world.keycrm.by_sku("SKU-00002"), 5)])
        await eventually(lambda: lookups_of(world, "SKU-00002") == 1)  # polled, queued, asked
    finally:
        first.kill()
        await first.wait()
    assert not in_sync(world)
    world.keycrm.lookup_gate.set()  # the killed process's request completes into the void
    second = await run_cli("run", "-c", str(path))
    try:
        await eventually(lambda: in_sync(world), timeout=20)
        assert lookups_of(world, "SKU-00002") == 2  # the restarted daemon asked again
    finally:
        second.terminate()
        await second.wait()
        world.keycrm.scan_gate.set()
