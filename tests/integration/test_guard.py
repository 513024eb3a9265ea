"""The mass-change guard: a scan that would empty a channel holds every one of those zeroes
until an operator releases them by name, or keyCRM shows their stock again."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import pytest

from daemon.commands.once import dry_run, run_once
from daemon.shell.daemon import Daemon
from daemon.shell.http import OPERATOR_HEADER
from daemon.simulator import FakeInventoryApi, FakeOffer
from tests.conftest import World, eventually, idle, running
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


def in_stock(world: World) -> None:
    for offer in world.keycrm.offers.values():
        offer.stock = {1: (5.0, 0.0)}


async def scan(daemon: Daemon) -> None:
    assert daemon.parts is not None
    progress = daemon.parts.source.progress
    # A scan under way may have read its page before the caller changed keyCRM (a request
    # merges into the next one): wait for a scan that started after this call.
    started, done = progress.started_at, progress.scans_completed
    daemon.parts.source.request_scan()
    await eventually(
        lambda: (
            progress.scans_completed > done
            and progress.started_at != started
            and not progress.running
        )
    )


def blocked(daemon: Daemon) -> float | None:
    return daemon.metrics.registry.get_sample_value(
        "stocksync_guard_blocked_total", {"merchant": "default", "channel": "pos"}
    )


def held(daemon: Daemon) -> float | None:
    return daemon.metrics.registry.get_sample_value(
        "stocksync_guard_held_items", {"merchant": "default", "channel": "pos"}
    )


def zeros(shop: FakeInventoryApi) -> int:
    return sum(1 for q in shop.stock.values() if q == 0)


def glitch(world: World) -> list[FakeOffer]:
    """keyCRM answers an empty but self-consistent catalog (`total: 0`); returns what it hid."""
    hidden = list(world.keycrm.offers.values())
    for offer in hidden:
        del world.keycrm.offers[offer.id]
    return hidden


async def release(
    daemon: Daemon, world: World, query: str = "?channel=pos"
) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{daemon.bound_port}/admin/guard/release{query}"
    headers = {"Authorization": f"Bearer {world.admin_token}", OPERATOR_HEADER: "ops@test"}
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as answer:
        return answer.status, await answer.json()


async def resync(daemon: Daemon) -> None:
    """`POST /admin/resync` as the runbooks suggest, and its scan to the end."""
    assert daemon.parts is not None
    progress = daemon.parts.source.progress
    done = progress.scans_completed
    daemon.resync("http")
    await eventually(lambda: progress.scans_completed > done and idle(daemon))


async def test_a_keycrm_glitch_over_three_scans_and_a_resync_zeroes_nothing(
    world: World,
) -> None:
    """Issue 17: an empty catalog vanishes every SKU on the second scan; the guard holds all of
    them (not the excess over the fraction), a third scan that agrees confirms nothing, a
    resync releases nothing; the operator's release by name does, and the history says so."""
    world.keycrm.populate(40)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)  # guard_fraction 0.3: 12 of 40
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        pushed = len(pos.requests)
        glitch(world)
        await scan(daemon)  # one scan without them proves nothing
        await scan(daemon)  # vanished: 40 zeroes, a mass change
        await eventually(lambda: idle(daemon))
        assert zeros(pos) == 0 and blocked(daemon) == 40
        await scan(daemon)  # a glitching keyCRM agrees with itself: no evidence
        await resync(daemon)  # the step the runbooks suggest re-applies the guard
        await eventually(lambda: idle(daemon))
        assert zeros(pos) == 0
        assert all(body["quantity"] > 0 for body in pos.requests[pushed:])  # resync: stock
        status = await daemon.status()
        channel = status["channels"]["pos"]
        assert channel["held"] == 40 and channel["pending"] == 0
        assert channel["guard"]["reason"].endswith(
            "would zero 40 of 40 in-stock items (fraction 0.3)"
        )
        assert channel["guard"]["since"]
        await daemon.refresh_metrics()
        assert held(daemon) == 40

        code, answer = await release(daemon, world)
        assert (code, answer) == (200, {"released": {"pos": 40}, "items": 40})
        await eventually(lambda: zeros(pos) == 40 and idle(daemon))
        assert (await daemon.status())["channels"]["pos"]["guard"] is None
        await daemon.refresh_metrics()
        assert held(daemon) == 0
        assert daemon.store is not None
        trail = [(row.outcome, row.error) for row in await daemon.store.history("SKU-00001")]
    assert trail[-2:] == [
        ("released", "guard release by ops@test via POST /admin/guard/release"),
        ("ok", None),
    ]


async def test_zeroes_beyond_the_fraction_are_all_held_until_keycrm_is_right_again(
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
            offer.stock = {1: (0.0, 0.0)}  # a keyCRM glitch: everything reads zero
        await scan(daemon)
        await scan(daemon)
        await eventually(lambda: idle(daemon))
        assert len(pos.requests) == pushed  # not one zero went out, not the first 12 either
        assert blocked(daemon) == 40
        assert (await daemon.status())["channels"]["pos"]["held"] == 40
    restarted = Daemon(world.config(), handle_signals=False)
    async with running(restarted):  # a hold outlives a restart, its reason too
        await scan(restarted)
        await eventually(lambda: idle(restarted))
        assert len(pos.requests) == pushed
        hold = (await restarted.status())["channels"]["pos"]["guard"]
        assert hold["held"] == 40 and "would zero 40 of 40" in hold["reason"]
        in_stock(world)  # keyCRM is right again: the hold ends by itself
        await scan(restarted)
        await eventually(lambda: in_sync(world) and idle(restarted))
        status = await restarted.status()
    assert len(pos.requests) == pushed
    assert status["channels"]["pos"]["held"] == 0
    assert status["channels"]["pos"]["guard"] is None


async def test_a_few_sell_outs_are_never_held(world: World) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        for n in range(1, 13):  # 12 of 40: exactly the fraction, no mass change
            world.keycrm.set_stock(f"SKU-{n:05d}", 0)
        await scan(daemon)
        await eventually(lambda: in_sync(world) and idle(daemon))
    assert blocked(daemon) == 0


async def test_a_look_up_zero_goes_out_during_a_hold_and_a_held_item_stays_held(
    world: World,
) -> None:
    world.keycrm.populate(40)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon), aiohttp.ClientSession() as session:
        await eventually(lambda: in_sync(world) and idle(daemon))
        for n in range(1, 31):
            world.keycrm.set_stock(f"SKU-{n:05d}", 0)
        await scan(daemon)
        assert blocked(daemon) == 30
        world.keycrm.set_stock("SKU-00035", 0)  # a real sell-out, told by webhook
        url = f"http://127.0.0.1:{daemon.bound_port}/webhooks/keycrm/{world.webhook_token}"
        payload = [{"sku": "SKU-00001", "in_stock": 0}, {"sku": "SKU-00035", "in_stock": 0}]
        async with session.post(url, json=payload) as answer:
            assert answer.status == 202
        await eventually(lambda: pos.quantity("400000000035", "S1") == 0)
        await eventually(lambda: idle(daemon))
        assert pos.quantity("400000000001", "S1") == 5  # held: a look-up is no release
        assert (await daemon.status())["channels"]["pos"]["held"] == 30
        world.keycrm.set_stock("SKU-00002", 7)  # back in stock: its hold ends
        async with session.post(url, json=[{"sku": "SKU-00002", "in_stock": 7}]) as answer:
            assert answer.status == 202
        await eventually(lambda: pos.quantity("400000000002", "S1") == 7)
        assert (await daemon.status())["channels"]["pos"]["held"] == 29


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
        "stocksync_keycrm_offers_skipped_total", {"merchant": "default", "reason": "duplicate_sku"}
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
        await eventually(lambda: blocked(restarted) == 40)
        assert sum(1 for k, q in pos.stock.items() if k[1] == "S1" and q == 0) == 0


async def test_once_holds_a_mass_change_and_a_second_once_does_not_release_it(
    world: World,
) -> None:
    world.keycrm.populate(20)
    in_stock(world)
    pos = await world.add_shop("pos")
    config = world.config()
    assert await run_once(config, wait=10, out=io.StringIO()) == 0
    for offer in world.keycrm.offers.values():
        offer.stock = {1: (0.0, 0.0)}
    preview = io.StringIO()
    assert await dry_run(config, preview) == 0
    assert preview.getvalue().endswith(
        "# pos: 0 to push; 20 zeroes held by the mass-change guard (not pushed)\n"
    )
    for _ in range(2):  # the second run agrees with the first: no evidence either
        out = io.StringIO()
        assert await run_once(config, wait=10, out=out) == 1
        assert "20 zeroes held by the mass-change guard" in out.getvalue()
        assert zeros(pos) == 0
