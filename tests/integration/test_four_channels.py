"""The daemon against all four channels at once: keys, values, and failures kept apart."""

from __future__ import annotations

import secrets

import anyio
import anyio.lowlevel
import pytest

from daemon.send import dispatch
from daemon.shell.daemon import Daemon
from daemon.simulator import FakeKlump, FakeMarketplacer, FakeOrdergroove, variant_id
from tests.conftest import World, channel_idle, eventually, running

pytestmark = pytest.mark.anyio


class Shops:
    def __init__(self) -> None:
        self.klump = FakeKlump("kl-" + secrets.token_hex(8))
        self.marketplacer = FakeMarketplacer("mp-" + secrets.token_hex(8))
        self.ordergroove = FakeOrdergroove("og-" + secrets.token_hex(8))


async def setup(world: World, monkeypatch: pytest.MonkeyPatch, skus: int = 9) -> tuple[Shops, str]:
    world.keycrm.populate(skus)  # three variants per product: Klump sums them by name
    await world.add_shop("pos")
    shops = Shops()
    monkeypatch.setenv("T_KLUMP", shops.klump.secret_key)
    monkeypatch.setenv("T_MP", shops.marketplacer.api_key)
    monkeypatch.setenv("T_OG", shops.ordergroove.hash_key)
    world.secrets += [
        shops.klump.secret_key,
        shops.marketplacer.api_key,
        shops.ordergroove.hash_key,
    ]
    key_map = world.tmp_path / "variants.csv"
    key_map.write_text(
        "sku,key\n" + "".join(f"SKU-{n:05d},{variant_id(7000 + n)}\n" for n in range(1, skus + 1)),
        encoding="utf-8",
    )
    urls = {
        name: await world._serve(getattr(shops, name).app())
        for name in ("klump", "marketplacer", "ordergroove")
    }
    channels = (
        world.shop_table("pos")
        + f"""
[[channel]]
name = "klump"
type = "klump"
base_url = "{urls["klump"]}"
secret_key_env = "T_KLUMP"
buffer = 1
rate_limit = "1000/s"

[[channel]]
name = "marketplacer"
type = "marketplacer"
base_url = "{urls["marketplacer"]}"
api_key_env = "T_MP"
key_map = "{key_map}"
rate_limit = "1000/s"

[[channel]]
name = "ordergroove"
type = "ordergroove"
base_url = "{urls["ordergroove"]}"
public_id = "{shops.ordergroove.public_id}"
sig_field = "{shops.ordergroove.sig_field}"
hash_key_env = "T_OG"
live_threshold = 2
rate_limit = "1000/s"
"""
    )
    return shops, channels


def expected_klump(world: World) -> dict[str, tuple[int, float]]:
    totals: dict[str, list[float]] = {}
    for offer in world.keycrm.offers.values():
        entry = totals.setdefault(offer.product_name, [0, float("inf")])
        entry[0] += max(0, offer.quantity - offer.reserve)
        entry[1] = min(entry[1], offer.price)
    return {name: (max(0, int(q) - 1), price) for name, (q, price) in totals.items()}


def available(world: World, sku: str) -> int:
    offer = world.keycrm.by_sku(sku)
    return max(0, int(offer.quantity - offer.reserve))


def all_synced(world: World, shops: Shops) -> bool:
    klump = {n: (p["quantity"], p["price"]) for n, p in shops.klump.products.items()}
    marketplacer = {variant_id(7000 + n): available(world, f"SKU-{n:05d}") for n in range(1, 10)}
    ordergroove = {o.sku: available(world, o.sku or "") > 2 for o in world.keycrm.offers.values()}
    return (
        klump == expected_klump(world)
        and shops.marketplacer.count_on_hand == marketplacer
        and shops.ordergroove.live == ordergroove
        and len(world.shops["pos"].stock) == 9
    )


async def test_every_channel_gets_its_own_keys_and_values(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    shops, channels = await setup(world, monkeypatch)
    daemon = Daemon(world.config(channels=channels), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: all_synced(world, shops))
        requests = len(shops.ordergroove.requests)
        # a change that stays above Ordergroove's threshold moves Klump and Marketplacer only
        offer = world.keycrm.by_sku("SKU-00001")
        world.keycrm.set_stock("SKU-00001", max(10, offer.quantity + 5))
        daemon.parts.source.request_scan()  # type: ignore[union-attr]
        await eventually(
            lambda: (
                shops.marketplacer.count_on_hand[variant_id(7001)] == available(world, "SKU-00001")
            )
        )
        await eventually(lambda: all_synced(world, shops))
        assert len(shops.ordergroove.requests) == requests
        # selling out crosses the threshold: Ordergroove hears about it
        world.keycrm.set_stock("SKU-00001", 1)
        daemon.parts.source.request_scan()  # type: ignore[union-attr]
        await eventually(lambda: shops.ordergroove.live.get("SKU-00001") is False)
    assert len(shops.marketplacer.documents) <= 3  # batched: 9 variants in a document or few


async def test_one_channel_down_or_throttled_never_holds_up_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "PROBE_BASE", 0.2)
    monkeypatch.setattr(dispatch, "PROBE_CAP", 0.4)
    shops, channels = await setup(world, monkeypatch)
    secret = shops.klump.secret_key
    shops.klump.secret_key = "revoked"
    shops.marketplacer.faults.add(429, retry_after="1")
    daemon = Daemon(world.config(channels=channels), handle_signals=False)
    async with running(daemon):
        await eventually(
            lambda: len(world.shops["pos"].stock) == 9 and len(shops.ordergroove.live) == 9
        )
        await eventually(lambda: channel_idle(daemon, "pos"))  # acknowledged, not only received
        status = await daemon.status()
        assert status["channels"]["klump"]["up"] is False
        assert status["channels"]["pos"]["pending"] == 0
        shops.klump.secret_key = secret
        await eventually(lambda: all_synced(world, shops), timeout=15)
        await anyio.lowlevel.checkpoint()
