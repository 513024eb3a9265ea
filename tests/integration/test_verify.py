"""Drift in the daemon: read back, heal, report; re-assert where a channel cannot be read.

Against the fakes' read routes: a value changed "by hand" on Marketplacer (GraphQL and REST) or
Ordergroove is found by the next verification pass, logged, counted, written to the history as
`drift`, and pushed again. Klump and the Inventory Update API cannot be read back: their values
are re-asserted on `reassert_interval`. Read-back stays within its share of the channel's rate
limit and waits while live changes are due.
"""

from __future__ import annotations

import time

import anyio
import pytest
import structlog
from aiohttp import web

from daemon.shell.daemon import Daemon
from daemon.simulator import variant_id
from tests.conftest import World, eventually, idle, running
from tests.integration.test_four_channels import Shops, all_synced, available, setup
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio

VERIFY = 'debounce = "0s"\nmax_delay = "1s"\nverify_interval = "300ms"\nverify_share = 0.5'


async def rest_channel(world: World, shops: Shops, *, skus: int, extra: str) -> str:
    """A Marketplacer channel on the REST route: variant `8000 + n` holds SKU n, seller 11."""
    key_map = world.tmp_path / "legacy.csv"
    key_map.write_text(
        "sku,key\n" + "".join(f"SKU-{n:05d},{8000 + n}\n" for n in range(1, skus + 1)),
        encoding="utf-8",
    )
    url = await world._serve(shops.marketplacer.app())
    return f"""
[[channel]]
name = "mp-rest"
type = "marketplacer"
base_url = "{url}"
api_key_env = "T_MP"
auth_header = "bearer"
api = "rest"
seller_map = {{ "1" = 11 }}
key_map = "{key_map}"
{extra}
"""


def drift_count(daemon: Daemon, channel: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "stocksync_drift_items_total", {"merchant": "default", "channel": channel}
    )
    return value or 0.0


async def test_drift_is_found_healed_and_reported(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    shops, channels = await setup(world, monkeypatch)
    daemon = Daemon(world.config(channels=channels, sync=VERIFY), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: all_synced(world, shops) and idle(daemon))
        variant = variant_id(7001)
        shops.marketplacer.edit_by_hand(variant, 999)
        product = "SKU-00002"
        shops.ordergroove.edit_by_hand(product, not shops.ordergroove.live[product])
        await eventually(lambda: drift_count(daemon, "marketplacer") == 1)
        await eventually(lambda: drift_count(daemon, "ordergroove") == 1)
        await eventually(lambda: all_synced(world, shops) and idle(daemon))
        assert shops.marketplacer.count_on_hand[variant] == available(world, "SKU-00001")
        assert daemon.store is not None
        history = await daemon.store.history("SKU-00001")
        drift = [row for row in history if row.outcome == "drift"]
        assert len(drift) == 1 and drift[0].after.quantity == 999
        last = daemon.metrics.registry.get_sample_value(
            "stocksync_verify_last_success_timestamp_seconds",
            {"merchant": "default", "channel": "marketplacer"},
        )
        assert last is not None and last > time.time() - 60
    assert drift_count(daemon, "klump") == 0  # not readable: never verified


async def test_drift_on_marketplacer_rest(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    shops, _ = await setup(world, monkeypatch)
    channels = await rest_channel(world, shops, skus=9, extra='rate_limit = "1000/s"')
    daemon = Daemon(world.config(channels=channels, sync=VERIFY), handle_signals=False)
    inventories = shops.marketplacer.inventories
    expected = {("8003", 11): available(world, "SKU-00003")}
    async with running(daemon):
        await eventually(lambda: len(inventories) == 9 and idle(daemon))
        shops.marketplacer.edit_by_hand("8003", 555, seller=11)
        await eventually(lambda: drift_count(daemon, "mp-rest") == 1)
        await eventually(lambda: inventories[("8003", 11)] == expected[("8003", 11)])


async def test_channels_without_read_back_are_reasserted(world: World) -> None:
    world.keycrm.populate(5)
    pos = await world.add_shop("pos")
    channels = world.shop_table("pos", 'store = "S1"\nreassert_interval = "300ms"')
    daemon = Daemon(world.config(channels=channels), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        key = next(iter(pos.stock))
        pos.stock[key] = 999  # changed by hand in the store system
        await eventually(lambda: in_sync(world))
    assert drift_count(daemon, "pos") == 0  # re-asserted, not verified


async def test_read_back_keeps_its_share_and_lets_live_changes_go_first(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    shops, _ = await setup(world, monkeypatch, skus=9)
    world.keycrm.populate(60)  # 60 variants on the REST route: one read each
    channels = await rest_channel(
        world, shops, skus=60, extra='rate_limit = "50/s"\nbatch_size = 1'
    )
    sync = 'debounce = "0s"\nmax_delay = "1s"\nverify_interval = "100ms"\nverify_share = 0.2'
    pushes: list[float] = []
    daemon = Daemon(world.config(channels=channels, sync=sync), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: len(shops.marketplacer.inventories) == 60 and idle(daemon))
        await eventually(lambda: len(shops.marketplacer.reads) >= 5)  # a pass is under way
        shops.marketplacer.on_update = lambda *_: pushes.append(time.monotonic())
        for offer in world.keycrm.offers.values():
            offer.stock = {1: (77.0, 0.0)}
        assert daemon.parts is not None
        daemon.parts.source.request_scan()  # 60 live changes: a backlog of a second or more
        await eventually(lambda: len(pushes) == 60, timeout=20)
        await anyio.sleep(1.0)
    reads = shops.marketplacer.reads
    windows = [sum(1 for t in reads if start <= t < start + 1.0) for start in reads]
    assert max(windows) <= 10 + 1, "read-back took more than 20% of 50 requests a second"
    during = [t for t in reads if pushes[0] + 0.05 < t < pushes[-1]]
    assert len(during) <= 1, f"{len(during)} reads while the live backlog drained"


async def test_klump_is_reasserted(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    shops, channels = await setup(world, monkeypatch)
    channels = channels.replace('type = "klump"\n', 'type = "klump"\nreassert_interval = "300ms"\n')
    daemon = Daemon(world.config(channels=channels), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: all_synced(world, shops) and idle(daemon))
        name = next(iter(shops.klump.products))
        shops.klump.products[name]["quantity"] = 999  # edited by hand in Klump's dashboard
        await eventually(lambda: all_synced(world, shops))


async def test_a_push_that_lands_while_its_item_is_read_is_not_drift(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's `drifted` and `stocksync_drift_items_total` are one count: an item the daemon
    itself pushes while a pass reads it (the pass holds the old acknowledgement, the channel the
    new value) is neither, and an edit by hand in the same pass is both."""
    shops, _ = await setup(world, monkeypatch)
    fake = shops.marketplacer
    arrived, release = anyio.Event(), anyio.Event()
    serve_read = fake.inventories_get

    async def gated(request: web.Request) -> web.StreamResponse:
        if request.match_info["variant"] == "8003" and not release.is_set():
            arrived.set()
            await release.wait()  # the pass has read its page; this read waits on the wire
        return await serve_read(request)

    fake.inventories_get = gated  # type: ignore[method-assign]  # before app() binds it
    channels = await rest_channel(world, shops, skus=9, extra='rate_limit = "1000/s"')
    sync = 'debounce = "0s"\nmax_delay = "1s"\nverify_interval = "200ms"\nverify_share = 0.5'
    daemon = Daemon(world.config(channels=channels, sync=sync), handle_signals=False)
    with structlog.testing.capture_logs() as logs:
        async with running(daemon):
            await eventually(lambda: len(fake.inventories) == 9 and idle(daemon))
            await arrived.wait()
            world.keycrm.set_stock("SKU-00003", available(world, "SKU-00003") + 40)
            assert daemon.parts is not None
            daemon.parts.source.request_scan()  # the daemon's own push, while 8003 is read
            pushed = available(world, "SKU-00003")
            await eventually(lambda: fake.inventories[("8003", 11)] == pushed and idle(daemon))
            fake.edit_by_hand("8005", 555, seller=11)  # read later in the same pass
            finished = sum(1 for e in logs if e["event"] == "verify.finished")
            release.set()
            await eventually(
                lambda: sum(1 for e in logs if e["event"] == "verify.finished") > finished
            )
    done = [e for e in logs if e["event"] == "verify.finished"][finished]
    assert drift_count(daemon, "mp-rest") == 1
    assert (done["drifted"], done["healed"], done["changed_meanwhile"]) == (1, 1, 1), done
    drift = [e["key"] for e in logs if e["event"] == "verify.drift"]
    assert drift == ['["8005","11"]']  # the REST key: variant and seller
