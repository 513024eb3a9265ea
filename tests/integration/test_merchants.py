"""Several merchants in one process (`[daemon] merchants = "DIR"`, SQLite state folder).

Each merchant has its own fake keyCRM (its own key) and its own shop: the tests prove each
converges to its own keyCRM, a webhook changes only its merchant's channels, and one merchant's
trouble (keyCRM refusing its key, a broken file) leaves the others syncing. A SIGHUP adds and
removes merchants without a restart.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
import pytest

from adapters import ADAPTERS
from daemon.config.deployment import Deployment, load_deployment
from daemon.core.errors import StateUnusable
from daemon.shell.daemon import Daemon
from daemon.shell.statelock import StateLock
from daemon.simulator.inventory_api import FakeInventoryApi
from daemon.simulator.keycrm import FakeKeycrm
from tests.conftest import Serve, eventually, running
from tests.integration.test_lifecycle import post_webhook

pytestmark = pytest.mark.anyio


@dataclass
class Merchant:
    name: str
    keycrm: FakeKeycrm
    shop: FakeInventoryApi
    token: str

    def in_sync(self) -> bool:
        return all(
            self.shop.quantity(o.barcode or "", "S1") == max(0, int(o.quantity - o.reserve))
            for o in self.keycrm.offers.values()
        )


class Fleet:
    """Merchants, each with a fake keyCRM and a shop, and the folder of their files."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Serve) -> None:
        self.tmp_path = tmp_path
        self.folder = tmp_path / "merchants"
        self.folder.mkdir()
        self._monkeypatch = monkeypatch
        self._serve = serve
        self.merchants: dict[str, Merchant] = {}
        self.main = tmp_path / "stocksync.toml"
        self.main.write_text(
            f'[daemon]\nmerchants = "merchants"\nstate = "{tmp_path / "state"}"\n'
            'listen = "127.0.0.1:0"\nshutdown_timeout = "3s"\n',
            encoding="utf-8",
        )

    async def add(self, name: str, skus: int, *, seed: int, key: str | None = None) -> Merchant:
        """A merchant whose keyCRM holds `skus` offers; `key`: what its file says the key is
        (a wrong one is refused with 401)."""
        real = f"kc-{name}-" + secrets.token_hex(6)
        keycrm = FakeKeycrm(real)
        keycrm.populate(skus, seed=seed)
        shop = FakeInventoryApi(f"shop-{name}-" + secrets.token_hex(6))
        merchant = Merchant(name, keycrm, shop, f"wh-{name}-" + secrets.token_hex(6))
        env = name.upper()
        self._monkeypatch.setenv(f"K_{env}", key or real)
        self._monkeypatch.setenv(f"S_{env}", shop.token)
        self._monkeypatch.setenv(f"W_{env}", merchant.token)
        keycrm_url = await self._serve(keycrm.app())
        shop_url = await self._serve(shop.app())
        (self.folder / f"{name}.toml").write_text(
            f"""
[keycrm]
base_url = "{keycrm_url}/v1"
api_key_env = "K_{env}"
webhook_token_env = "W_{env}"
requests_per_minute = 6000
poll_interval = "1h"
timeout = "2s"

[sync]
debounce = "0s"
max_delay = "1s"

[[channel]]
name = "pos"
type = "inventory_api"
base_url = "{shop_url}"
token_env = "S_{env}"
rate_limit = "1000/s"
store = "S1"
timeout = "2s"
""",
            encoding="utf-8",
        )
        self.merchants[name] = merchant
        return merchant

    def load(self) -> Deployment:
        return load_deployment(self.main, ADAPTERS)

    def daemon(self) -> Daemon:
        return Daemon(self.load(), reload=self.load, handle_signals=False)


@pytest.fixture
async def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Serve) -> Fleet:
    return Fleet(tmp_path, monkeypatch, serve)


async def get_json(port: int | None, path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as answer,
    ):
        return answer.status, await answer.json(content_type=None)


def changed(merchant: Merchant, sku: str) -> int:
    """Restock one SKU in the merchant's keyCRM; the quantity its shop should show."""
    merchant.keycrm.set_stock(sku, 77.0)
    return 77


async def test_three_merchants_converge_each_to_its_own_keycrm(fleet: Fleet) -> None:
    acme = await fleet.add("acme", 12, seed=1)
    bolt = await fleet.add("bolt", 9, seed=2)
    cody = await fleet.add("cody", 15, seed=3)
    daemon = fleet.daemon()
    async with running(daemon):
        await eventually(lambda: acme.in_sync() and bolt.in_sync() and cody.in_sync())
        assert sorted(p.name for p in (fleet.tmp_path / "state").glob("*.db")) == [
            "acme.db",
            "bolt.db",
            "cody.db",
        ]
        # A webhook with acme's token changes acme's shop, and only that.
        bolt_pushes, cody_pushes = bolt.shop.arrivals, cody.shop.arrivals
        bolt_asked, cody_asked = len(bolt.keycrm.requests), len(cody.keycrm.requests)
        want = changed(acme, "SKU-00003")
        assert await post_webhook(daemon.bound_port or 0, acme.token, ["SKU-00003"]) == 202
        await eventually(
            lambda: acme.shop.quantity(acme.keycrm.by_sku("SKU-00003").barcode or "", "S1") == want
        )
        assert (bolt.shop.arrivals, cody.shop.arrivals) == (bolt_pushes, cody_pushes)
        assert (len(bolt.keycrm.requests), len(cody.keycrm.requests)) == (bolt_asked, cody_asked)
        status, body = await get_json(daemon.bound_port, "/status")
        assert status == 200
        merchants = body["merchants"]
        assert isinstance(merchants, dict)
        assert sorted(merchants) == ["acme", "bolt", "cody"]
        assert all(m["ready"] for m in merchants.values())
        status, one = await get_json(daemon.bound_port, "/status?merchant=bolt")
        assert status == 200
        assert one["merchant"] == "bolt"
        assert "channels" in one
        assert (await get_json(daemon.bound_port, "/status?merchant=nobody"))[0] == 404


async def test_one_merchants_refused_key_broken_file_or_damaged_state_leaves_the_others_fresh(
    fleet: Fleet,
) -> None:
    acme = await fleet.add("acme", 10, seed=1)
    await fleet.add("bolt", 10, seed=2, key="kc-wrong")
    cody = await fleet.add("cody", 10, seed=3)
    (fleet.folder / "dud.toml").write_text('[keycrm]\nrequests_per_minute = "lots"\n')
    await fleet.add("dent", 5, seed=4)
    (fleet.tmp_path / "state").mkdir()
    (fleet.tmp_path / "state" / "dent.db").write_bytes(b"not a database, " * 64)  # damaged
    daemon = fleet.daemon()
    async with running(daemon):
        await eventually(lambda: acme.in_sync() and cody.in_sync())
        for merchant in (acme, cody):  # fresh within debounce + 1 s, whatever bolt does
            want = changed(merchant, "SKU-00002")
            sent = time.monotonic()
            port = daemon.bound_port or 0
            assert await post_webhook(port, merchant.token, ["SKU-00002"]) == 202
            barcode = merchant.keycrm.by_sku("SKU-00002").barcode or ""
            await eventually(lambda m=merchant, b=barcode, w=want: m.shop.quantity(b, "S1") == w)
            assert time.monotonic() - sent < 1.0
        assert (await _get_text(daemon.bound_port, "/readyz"))[0] == 200
        _, body = await get_json(daemon.bound_port, "/status")
        merchants = body["merchants"]
        assert isinstance(merchants, dict)
        assert merchants["acme"]["ready"] and merchants["cody"]["ready"]
        assert not merchants["bolt"]["ready"]
        assert "keyCRM" in merchants["bolt"]["reason"]
        assert not merchants["dent"]["ready"]
        assert "cannot open its state" in merchants["dent"]["reason"]
        assert merchants["dud"]["role"] == "broken"
        assert any("dud.toml keycrm.requests_per_minute" in f for f in merchants["dud"]["faults"])


async def test_sighup_adds_and_removes_merchants_without_a_restart(fleet: Fleet) -> None:
    acme = await fleet.add("acme", 8, seed=1)
    bolt = await fleet.add("bolt", 8, seed=2)
    daemon = fleet.daemon()
    async with running(daemon):
        await eventually(lambda: acme.in_sync() and bolt.in_sync())
        acme_pipeline = daemon.merchants["acme"].pipeline
        cody = await fleet.add("cody", 8, seed=3)
        (fleet.folder / "bolt.toml").unlink()
        await daemon.reload()
        await eventually(cody.in_sync)
        await eventually(lambda: "bolt" not in daemon.merchants)
        assert daemon.merchants["acme"].pipeline is acme_pipeline, "an unchanged merchant restarted"
        # bolt stopped cleanly: its state is closed and unlocked, its series are gone.
        await eventually(lambda: _unlocked(fleet.tmp_path / "state" / "bolt.db"))
        _, text = await _get_text(daemon.bound_port, "/metrics")
        assert 'merchant="bolt"' not in text
        assert 'merchant="cody"' in text
        # ... and its webhook token no longer opens anything.
        assert await post_webhook(daemon.bound_port or 0, bolt.token, ["SKU-00001"]) == 404


def _unlocked(path: Path) -> bool:
    try:
        with StateLock(path):
            return True
    except StateUnusable:
        return False


async def _get_text(port: int | None, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as answer,
    ):
        return answer.status, await answer.text()


async def test_a_merchant_removed_and_added_back_before_its_drain_ended_is_served(
    fleet: Fleet,
) -> None:
    """Two reloads in a row (a file moved out and back): the new pipeline waits for the old
    one's drain instead of finding its state locked, and keeps its series."""
    acme = await fleet.add("acme", 8, seed=1)
    await fleet.add("bolt", 4, seed=2)  # a folder left empty is refused
    daemon = fleet.daemon()
    async with running(daemon):
        await eventually(acme.in_sync)
        gate = acme.shop.answer_gate = anyio.Event()  # a push stays in flight: the drain waits
        changed(acme, "SKU-00001")
        assert await post_webhook(daemon.bound_port or 0, acme.token, ["SKU-00001"]) == 202
        await eventually(lambda: acme.shop.in_flight == 1)
        path = fleet.folder / "acme.toml"
        text = path.read_text(encoding="utf-8")
        path.unlink()
        await daemon.reload()
        path.write_text(text, encoding="utf-8")
        await daemon.reload()
        gate.set()
        await eventually(lambda: daemon.merchants["acme"].pipeline is not None)
        barcode = acme.keycrm.by_sku("SKU-00002").barcode or ""
        acme.keycrm.set_stock("SKU-00002", 55.0)  # served by the pipeline of the second reload
        assert await post_webhook(daemon.bound_port or 0, acme.token, ["SKU-00002"]) == 202
        await eventually(lambda: acme.shop.quantity(barcode, "S1") == 55)
        assert daemon.merchants["acme"].trouble is None
        _, text = await _get_text(daemon.bound_port, "/metrics")
        assert 'stocksync_pending_items{channel="pos",merchant="acme"}' in text
