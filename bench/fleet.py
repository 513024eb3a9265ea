"""Many merchants' fakes in one aiohttp server, and the files of a deployment serving them all.

Each merchant has its own fake keyCRM (its own key and webhook token), Marketplacer and
Ordergroove, mounted under `/m/<merchant>/keycrm`, `/m/<merchant>/mp` and `/m/<merchant>/og` of
one application on one port: 200 merchants are 600 fakes, and 600 servers would be 600 listeners
and event-loop wake-ups for nothing. The server runs on the bench's loop, apart from the daemon
(a subprocess), so the daemon's CPU and memory are its own.
"""

from __future__ import annotations

import secrets
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.world import available
from daemon.simulator import FakeKeycrm, FakeMarketplacer, FakeOrdergroove, variant_id

__all__ = ["Fleet", "Shop", "Tally"]

#: each merchant's keyCRM budget: far above what a scan needs, so stocksync is what is measured
REQUESTS_PER_MINUTE = 6000
#: both channels batch 100 items a request with a rate limit the process cannot reach
CHANNEL = 'batch_size = 100\nrate_limit = "100/s"\n'


@dataclass
class Shop:
    """One merchant: its keyCRM, its two channels, and the secrets its file names."""

    name: str
    keycrm: FakeKeycrm
    marketplacer: FakeMarketplacer
    ordergroove: FakeOrdergroove
    token: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str, skus: int, seed: int) -> Shop:
        keycrm = FakeKeycrm(secrets.token_urlsafe(12))
        keycrm.populate(skus, seed=seed)
        marketplacer = FakeMarketplacer(secrets.token_urlsafe(12))
        ordergroove = FakeOrdergroove(secrets.token_urlsafe(12))
        ordergroove.api_key = secrets.token_urlsafe(12)
        shop = cls(name, keycrm, marketplacer, ordergroove, secrets.token_urlsafe(12))
        var = name.upper().replace("-", "_")
        shop.env = {
            f"BENCH_{var}_KEYCRM": keycrm.api_key,
            f"BENCH_{var}_WEBHOOK": shop.token,
            f"BENCH_{var}_MP": marketplacer.api_key,
            f"BENCH_{var}_OG": ordergroove.api_key,
        }
        return shop

    def apps(self) -> dict[str, web.Application]:
        return {
            "keycrm": self.keycrm.app(),
            "mp": self.marketplacer.app(),
            "og": self.ordergroove.app(),
        }

    def synced(self) -> bool:
        """Both channels hold what keyCRM says, for every offer."""
        mp, og = self.marketplacer.count_on_hand, self.ordergroove.live
        for offer in self.keycrm.offers.values():
            want = available(offer.quantity, offer.reserve)
            if mp.get(variant_id(offer.id)) != want or og.get(offer.sku or "") != (want > 0):
                return False
        return True

    def body(self, base: str, folder: Path) -> str:
        """The merchant's `[keycrm]`, `[sync]` and `[[channel]]` tables."""
        var = self.name.upper().replace("-", "_")
        key_map = folder / f"{self.name}-variants.csv"
        rows = "".join(f"{o.sku},{variant_id(o.id)}\n" for o in self.keycrm.offers.values())
        key_map.write_text("sku,key\n" + rows, encoding="utf-8")
        root = f"{base}/m/{self.name}"
        return f"""
[keycrm]
base_url = "{root}/keycrm/v1"
api_key_env = "BENCH_{var}_KEYCRM"
webhook_token_env = "BENCH_{var}_WEBHOOK"
requests_per_minute = {REQUESTS_PER_MINUTE}
poll_interval = "1h"

[sync]

[[channel]]
name = "marketplacer"
type = "marketplacer"
base_url = "{root}/mp"
api_key_env = "BENCH_{var}_MP"
key_map = "{key_map}"
{CHANNEL}
[[channel]]
name = "ordergroove"
type = "ordergroove"
base_url = "{root}/og"
api_key_env = "BENCH_{var}_OG"
key = "{{sku}}"
{CHANNEL}"""


class Fleet:
    """`merchants` shops of `skus` offers each, served from one port once `start`ed."""

    def __init__(self, merchants: int, skus: int) -> None:
        self.shops = {
            f"m{n:04d}": Shop.create(f"m{n:04d}", skus, seed=n) for n in range(1, merchants + 1)
        }
        self.skus = skus
        self.base = ""

    @property
    def env(self) -> dict[str, str]:
        return {k: v for shop in self.shops.values() for k, v in shop.env.items()}

    async def start(self, stack: AsyncExitStack) -> None:
        root = web.Application()
        for name, shop in self.shops.items():
            for kind, app in shop.apps().items():
                root.add_subapp(f"/m/{name}/{kind}", app)
        runner = web.AppRunner(root, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        self.base = f"http://127.0.0.1:{runner.addresses[0][1]}"

    def write_merchants(self, folder: Path, port: int) -> Path:
        """A main file with `[daemon] merchants = "merchants"`, one file per shop beside it."""
        merchants = folder / "merchants"
        merchants.mkdir()
        maps = folder / "maps"
        maps.mkdir()
        for name, shop in self.shops.items():
            (merchants / f"{name}.toml").write_text(shop.body(self.base, maps), encoding="utf-8")
        main = folder / "stocksync.toml"
        main.write_text(_daemon(port, f'merchants = "merchants"\nstate = "{folder / "state"}"'))
        return main

    def write_single(self, folder: Path, port: int) -> Path:
        """Today's single-merchant file for the (only) shop: `[daemon]` and its tables."""
        (shop,) = self.shops.values()
        main = folder / "stocksync.toml"
        daemon = _daemon(port, f'state = "{folder / "state.db"}"')
        main.write_text(daemon + shop.body(self.base, folder), encoding="utf-8")
        return main

    def all_pushed(self) -> bool:
        """Every shop's channels have been sent every offer at least once (a cheap check)."""
        return all(
            len(s.marketplacer.count_on_hand) >= self.skus and len(s.ordergroove.live) >= self.skus
            for s in self.shops.values()
        )


def _daemon(port: int, keys: str) -> str:
    return (
        f'[daemon]\n{keys}\nlisten = "127.0.0.1:{port}"\nlog_level = "warning"\n'
        'shutdown_timeout = "10s"\n'
    )


class Tally:
    """Items the channels of every shop acknowledged since `mark()`, counted incrementally
    (each call reads only the requests that arrived since the previous one)."""

    def __init__(self, fleet: Fleet) -> None:
        self._shops = list(fleet.shops.values())
        self._seen: list[tuple[int, int]] = []
        self.items = 0

    def mark(self) -> None:
        self._seen = [
            (len(s.marketplacer.documents), len(s.ordergroove.requests)) for s in self._shops
        ]
        self.items = 0

    def count(self) -> int:
        for n, shop in enumerate(self._shops):
            documents, requests = shop.marketplacer.documents, shop.ordergroove.requests
            mp, og = self._seen[n]
            self.items += sum(len(d.get("variables") or {}) for d in documents[mp:])
            self.items += sum(len(r) for r in requests[og:])
            self._seen[n] = (len(documents), len(requests))
        return self.items


class Freshness:
    """From a change in a shop's keyCRM (its webhook posted at once) to both its channels
    holding it. A change overtaken by a later one of the same offer is not timed."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, int], tuple[Shop, str, int, float]] = {}
        self.seconds: list[float] = []

    def change(self, shop: Shop, offer: Any) -> str:
        """Flip the offer between out of stock and in stock (both channels see a new value);
        returns its SKU."""
        warehouse, (quantity, reserve) = next(iter(offer.stock.items()))
        fresh = reserve if available(quantity, reserve) > 0 else reserve + 7
        offer.stock = {warehouse: (fresh, reserve)}
        want = available(offer.quantity, offer.reserve)
        self._waiting[(shop.name, offer.id)] = (shop, variant_id(offer.id), want, time.monotonic())
        return str(offer.sku)

    def look(self) -> None:
        now = time.monotonic()
        for key, (shop, variant, want, since) in list(self._waiting.items()):
            sku = shop.keycrm.offers[key[1]].sku or ""
            held = shop.marketplacer.count_on_hand.get(variant), shop.ordergroove.live.get(sku)
            if held == (want, want > 0):
                self.seconds.append(now - since)
                del self._waiting[key]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def p99(self) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
