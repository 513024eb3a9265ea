"""The mass-change guard: a scan that would empty a channel is held back until confirmed."""

from __future__ import annotations

import pytest

from daemon.pipeline import Daemon
from tests.conftest import World, eventually, running
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
        await eventually(lambda: in_sync(world))
        for offer in world.keycrm.offers.values():
            offer.stock = {1: (0.0, 0.0)}  # a keyCRM glitch: everything reads zero
        await scan(daemon)
        await eventually(lambda: sum(1 for q in pos.stock.values() if q == 0) == 12)
        assert blocked(daemon) == 28
        status = await daemon.status()
        assert status["channels"]["pos"]["pending"] == 0  # held items wait, they are not lag
        await scan(daemon)  # still zero: confirmed
        await eventually(lambda: in_sync(world))
    assert set(pos.stock.values()) == {0}


async def test_a_glitch_that_clears_by_the_next_scan_never_reaches_the_channel(
    world: World,
) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world))
        pushed = len(pos.requests)
        for offer in world.keycrm.offers.values():
            offer.stock = {1: (0.0, 0.0)}
        await scan(daemon)
        await eventually(lambda: len(pos.requests) == pushed + 12)
        in_stock(world)  # keyCRM is right again
        await scan(daemon)
        await eventually(lambda: in_sync(world))
    assert len(pos.requests) == pushed + 24  # 12 zeroes out and back; the 28 held never went


async def test_a_few_sell_outs_are_never_held(world: World) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world))
        for n in range(1, 6):
            world.keycrm.set_stock(f"SKU-{n:05d}", 0)
        await scan(daemon)
        await eventually(lambda: in_sync(world))
    assert blocked(daemon) == 0


async def test_an_operator_resync_releases_held_zeroes(world: World) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world))
        for offer in world.keycrm.offers.values():
            offer.stock = {1: (0.0, 0.0)}
        await scan(daemon)
        assert blocked(daemon) == 28
        daemon.resync("http")
        await eventually(lambda: in_sync(world))
