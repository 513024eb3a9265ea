"""The mass-change guard: a scan that would empty a channel is held back until confirmed."""

from __future__ import annotations

import pytest

from daemon.pipeline import Daemon
from tests.conftest import World, eventually, idle, running
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


def in_stock(world: World) -> None:
    for offer in world.keycrm.offers.values():
        offer.stock = {1: (5.0, 0.0)}


async def scan(daemon: Daemon) -> None:
    assert daemon.parts is not None
    progress = daemon.parts.source.progress
    done = progress.scans_completed
    daemon.parts.source.request_scan()
    await eventually(lambda: progress.scans_completed > done)


def blocked(daemon: Daemon) -> float | None:
    return daemon.metrics.registry.get_sample_value(
        "stocksync_guard_blocked_total", {"channel": "pos"}
    )


async def test_zeroes_beyond_the_fraction_wait_for_a_second_scan(world: World) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)  # guard_fraction 0.3: 12 of 40
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        for offer in world.keycrm.offers.values():
            offer.stock = {1: (0.0, 0.0)}  # a keyCRM glitch: everything reads zero
        await scan(daemon)
        await eventually(lambda: sum(1 for q in pos.stock.values() if q == 0) == 12)
        await eventually(lambda: idle(daemon))
        assert blocked(daemon) == 28
        status = await daemon.status()
        assert status["channels"]["pos"]["pending"] == 0  # held items wait, they are not lag
        await scan(daemon)  # still zero: confirmed
        await eventually(lambda: in_sync(world) and idle(daemon))
    assert set(pos.stock.values()) == {0}


async def test_a_glitch_that_clears_by_the_next_scan_never_reaches_the_channel(
    world: World,
) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        pushed = len(pos.requests)
        for offer in world.keycrm.offers.values():
            offer.stock = {1: (0.0, 0.0)}
        await scan(daemon)
        await eventually(lambda: len(pos.requests) >= pushed + 12 and idle(daemon))
        assert len(pos.requests) == pushed + 12
        in_stock(world)  # keyCRM is right again
        await scan(daemon)
        await eventually(lambda: in_sync(world) and idle(daemon))
    assert len(pos.requests) == pushed + 24  # 12 zeroes out and back; the 28 held never went


async def test_a_few_sell_outs_are_never_held(world: World) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        for n in range(1, 6):
            world.keycrm.set_stock(f"SKU-{n:05d}", 0)
        await scan(daemon)
        await eventually(lambda: in_sync(world) and idle(daemon))
    assert blocked(daemon) == 0


async def test_an_operator_resync_releases_held_zeroes(world: World) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        for offer in world.keycrm.offers.values():
            offer.stock = {1: (0.0, 0.0)}
        await scan(daemon)
        assert blocked(daemon) == 28
        daemon.resync("http")
        await eventually(lambda: in_sync(world) and idle(daemon))


async def test_a_sku_gone_from_keycrm_is_zeroed_after_two_complete_scans(world: World) -> None:
    world.keycrm.populate(12)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        del world.keycrm.offers[1003]  # SKU-00003 disappears from keyCRM
        await scan(daemon)
        assert pos.quantity("400000000003", "S1") == 5  # one scan without it proves nothing
        await scan(daemon)
        await eventually(lambda: pos.quantity("400000000003", "S1") == 0)


async def test_duplicate_skus_are_reported_and_only_the_first_offer_counts(world: World) -> None:
    from daemon.simulator import FakeOffer

    world.keycrm.populate(3)
    in_stock(world)
    world.keycrm.add(
        FakeOffer(
            id=2000,
            sku="SKU-00002",
            product_id=9,
            product_name="Copy",
            barcode="400000000002",
            stock={1: (99.0, 0.0)},
        )
    )
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: len(pos.stock) == 3)
        await eventually(
            lambda: daemon.parts is not None and daemon.parts.source.progress.scans_completed >= 1
        )
        assert daemon.store is not None
        record = next(r for r in await daemon.store.records() if r.sku == "SKU-00002")
        assert record.stock.offer_id == 1002
        assert record.catalog is not None
        assert record.catalog.offer_id == 1002  # the catalog keeps the same first offer
    assert pos.quantity("400000000002", "S1") == 5
    duplicates = daemon.metrics.registry.get_sample_value(
        "stocksync_keycrm_offers_skipped_total", {"reason": "duplicate_sku"}
    )
    assert duplicates == 1


async def test_a_config_change_that_would_zero_a_channel_is_held_too(world: World) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
    # The operator points the channel at another store code by mistake: every S1 item loses
    # its records and would drop to 0.
    moved = world.shop_table("pos", 'store = "S2"')
    restarted = Daemon(world.config(channels=moved), handle_signals=False)
    async with running(restarted):
        await eventually(lambda: sum(1 for k, q in pos.stock.items() if k[1] == "S2") == 40)
        assert sum(1 for k, q in pos.stock.items() if k[1] == "S1" and q == 0) == 12
        assert blocked(restarted) == 28
