"""The fakes on loopback and a real `stocksync run` subprocess against them, for the benchmarks.

The fakes (daemon/simulator/) run on the bench's own event loop; the daemon is a separate process,
configured through a TOML file like any deployment, so what is measured is the product as shipped.
Every request a fake answers is time-stamped on arrival (a middleware), which is how the channel
rate and the request counts are measured.
"""

from __future__ import annotations

import math
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
from aiohttp import web

from daemon.simulator import (
    FakeInventoryApi,
    FakeKeycrm,
    FakeMarketplacer,
    FakeOrdergroove,
    variant_id,
)

__all__ = ["DaemonProcess", "Fakes", "available", "free_port", "vm_hwm"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm_hwm(pid: int | str = "self") -> int:
    """Peak resident memory (bytes) of a live process, from /proc: per process, never inherited."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status (not Linux?)")


def available(quantity: float, reserve: float) -> int:
    """What stocksync's default rules make of an offer: floor(quantity - reserve), at least 0."""
    return max(0, math.floor(quantity - reserve))


@dataclass
class Fakes:
    """keyCRM, a Marketplacer, an Ordergroove and an Inventory Update API, each on its own port."""

    skus: int
    keycrm_limit: int | None = None
    keycrm: FakeKeycrm = field(init=False)
    marketplacer: FakeMarketplacer = field(init=False)
    ordergroove: FakeOrdergroove = field(init=False)
    pos: FakeInventoryApi = field(init=False)
    urls: dict[str, str] = field(default_factory=dict)
    arrivals: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {
            "BENCH_KEYCRM_KEY": secrets.token_urlsafe(12),
            "BENCH_WEBHOOK_TOKEN": secrets.token_urlsafe(12),
            "BENCH_MARKETPLACER_KEY": secrets.token_urlsafe(12),
            "BENCH_ORDERGROOVE_KEY": secrets.token_urlsafe(12),
            "BENCH_POS_TOKEN": secrets.token_urlsafe(12),
        }
        self.keycrm = FakeKeycrm(self.env["BENCH_KEYCRM_KEY"], limit=self.keycrm_limit)
        self.keycrm.populate(self.skus)
        self.marketplacer = FakeMarketplacer(self.env["BENCH_MARKETPLACER_KEY"])
        self.ordergroove = FakeOrdergroove(secrets.token_urlsafe(12))
        self.ordergroove.api_key = self.env["BENCH_ORDERGROOVE_KEY"]
        self.pos = FakeInventoryApi(self.env["BENCH_POS_TOKEN"])

    def _stamped(self, name: str, app: web.Application) -> web.Application:
        stamps = self.arrivals[name]

        @web.middleware
        async def stamp(request: web.Request, handler: Any) -> web.StreamResponse:
            stamps.append(time.monotonic())
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(stamp)
        return app

    async def start(self, stack: AsyncExitStack) -> None:
        apps = {
            "keycrm": self.keycrm.app(),
            "marketplacer": self.marketplacer.app(),
            "ordergroove": self.ordergroove.app(),
            "pos": self.pos.app(),
        }
        for name, app in apps.items():
            runner = web.AppRunner(self._stamped(name, app), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.urls[name] = f"http://127.0.0.1:{runner.addresses[0][1]}"

    # --- what the channels hold ------------------------------------------------------------------

    def expected(self) -> dict[str, int]:
        """Marketplacer variant -> the count keyCRM says it should hold."""
        return {
            variant_id(o.id): available(o.quantity, o.reserve) for o in self.keycrm.offers.values()
        }

    def marketplacer_consistent(self, expected: dict[str, int] | None = None) -> bool:
        held = self.marketplacer.count_on_hand
        want = expected if expected is not None else self.expected()
        return all(held.get(k) == v for k, v in want.items())

    async def wait_consistent(self, within: float) -> float:
        """Seconds until Marketplacer holds what keyCRM says for every variant."""
        expected = self.expected()
        started = time.monotonic()
        with anyio.fail_after(within):
            while not self.marketplacer_consistent(expected):
                await anyio.sleep(0.01)
        return time.monotonic() - started

    def pos_consistent(self) -> bool:
        """Whether the Inventory Update API holds what keyCRM says for every offer (by UPC)."""
        return all(
            self.pos.quantity(o.barcode or "", "S1") == available(o.quantity, o.reserve)
            for o in self.keycrm.offers.values()
        )

    def marketplacer_items(self, since: int = 0) -> list[int]:
        """Items per GraphQL request, for the requests from index `since` on."""
        return [len(d.get("variables") or {}) for d in self.marketplacer.documents[since:]]

    def ordergroove_items(self, since: int = 0) -> list[int]:
        return [len(r) for r in self.ordergroove.requests[since:]]

    def change(self, fraction: float, *, seed: int, at_least: int = 1) -> list[str]:
        """Change the stock of a share of the offers in keyCRM; returns their SKUs."""
        rng = random.Random(seed)
        offers = sorted(self.keycrm.offers.values(), key=lambda o: o.id)
        chosen = rng.sample(offers, max(at_least, round(len(offers) * fraction)))
        for offer in chosen:
            warehouse, (quantity, reserve) = next(iter(offer.stock.items()))
            # Up by at least 5 over a reserve of at most 2: the available count surely moves.
            offer.stock = {warehouse: (quantity + 5 + rng.randint(0, 5), reserve)}
        return [o.sku for o in chosen if o.sku]

    # --- config ----------------------------------------------------------------------------------

    def key_map(self, folder: Path) -> Path:
        path = folder / "marketplacer-variants.csv"
        rows = "".join(f"{o.sku},{variant_id(o.id)}\n" for o in self.keycrm.offers.values())
        path.write_text("sku,key\n" + rows, encoding="utf-8")
        return path

    def channel(self, kind: str, name: str, folder: Path, extra: str = "") -> str:
        """One `[[channel]]` table for a fake; `extra` adds or overrides engine keys."""
        if kind == "marketplacer":
            body = (
                f'base_url = "{self.urls["marketplacer"]}"\n'
                'api_key_env = "BENCH_MARKETPLACER_KEY"\n'
                f'key_map = "{self.key_map(folder)}"\n'
            )
        elif kind == "ordergroove":
            body = (
                f'base_url = "{self.urls["ordergroove"]}"\n'
                'api_key_env = "BENCH_ORDERGROOVE_KEY"\nkey = "{sku}"\n'
            )
        elif kind == "inventory_api":
            body = (
                f'base_url = "{self.urls["pos"]}"\n'
                'token_env = "BENCH_POS_TOKEN"\nstore = "S1"\nmatch = "upc"\n'
            )
        else:
            raise ValueError(kind)
        return f'\n[[channel]]\nname = "{name}"\ntype = "{kind}"\n{body}{extra}\n'

    def write_config(
        self,
        folder: Path,
        channels: str,
        *,
        port: int,
        requests_per_minute: int = 6000,
        sync: str = "",
        poll_interval: str = "1h",
        state: str | None = None,
        daemon: str = "",
        keycrm: str = "",
        webhook: bool = True,
        filename: str = "stocksync.toml",
    ) -> Path:
        """`state`: a SQLite file in `folder` unless given (a `postgresql://` URL); `daemon`
        and `keycrm` add keys to their tables; `webhook=False` leaves keyCRM's webhook out."""
        path = folder / filename
        path.write_text(
            f"""
[daemon]
state = "{state or folder / "state.db"}"
listen = "127.0.0.1:{port}"
log_level = "warning"
shutdown_timeout = "10s"
{daemon}

[keycrm]
base_url = "{self.urls["keycrm"]}/v1"
api_key_env = "BENCH_KEYCRM_KEY"
{'webhook_token_env = "BENCH_WEBHOOK_TOKEN"' if webhook else ""}
requests_per_minute = {requests_per_minute}
poll_interval = "{poll_interval}"
{keycrm}

[sync]
{sync}
{channels}
""",
            encoding="utf-8",
        )
        return path


class DaemonProcess:
    """`stocksync run -c FILE` (or `command -c FILE`) as a child process, with its HTTP
    listener on a known port."""

    def __init__(
        self,
        config: Path,
        port: int,
        env: dict[str, str],
        log: Path,
        command: tuple[str, ...] = ("-m", "daemon", "run"),
    ) -> None:
        self.config = config
        self.command = command
        self.port = port
        self.env = {**os.environ, **env}
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        self.process: anyio.abc.Process | None = None
        self.started_at = 0.0

    async def start(self) -> None:
        self.started_at = time.monotonic()
        with self.log.open("ab") as log:
            self.process = await anyio.open_process(
                [sys.executable, *self.command, "-c", str(self.config)],
                env=self.env,
                stdin=None,
                stdout=log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self, within: float = 30.0) -> int | None:
        """SIGTERM and wait; killed if it takes longer than `within`."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(within):
            return await self.process.wait()
        self.process.kill()
        return await self.process.wait()

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        try:
            async with session.get(
                f"{self.base}/status", timeout=aiohttp.ClientTimeout(total=120)
            ) as response:
                data: dict[str, Any] = await response.json()
                return data
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_answering(self, session: aiohttp.ClientSession, within: float) -> float:
        """Seconds from start until `/healthz` first answers 200."""
        with anyio.fail_after(within):
            while True:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise RuntimeError(f"stocksync exited with {self.process.returncode}")
                try:
                    async with session.get(f"{self.base}/healthz") as response:
                        if response.status == 200:
                            return time.monotonic() - self.started_at
                except aiohttp.ClientError:
                    pass
                await anyio.sleep(0.02)

    async def wait_settled(
        self, session: aiohttp.ClientSession, within: float, *, scans: int = 1
    ) -> dict[str, Any]:
        """Until `scans` complete scans are on record and nothing is pending or in flight."""
        with anyio.fail_after(within):
            while True:
                status = await self.status(session)
                if status is not None and settled(status, scans):
                    return status
                await anyio.sleep(0.2)


def settled(status: dict[str, Any], scans: int) -> bool:
    source = status.get("source") or {}
    channels = (status.get("channels") or {}).values()
    return (
        source.get("scans_completed", 0) >= scans
        and not source.get("scan_running")
        and not source.get("lookups_queued")
        and all(c["pending"] == 0 and c["in_flight"] == 0 for c in channels)
    )


async def post_webhook(
    session: aiohttp.ClientSession, base: str, token: str, skus: list[str]
) -> None:
    body = [{"sku": sku, "offer_id": 0, "in_stock": 0, "in_reserve": 0} for sku in skus]
    async with session.post(f"{base}/webhooks/keycrm/{token}", json=body) as response:
        await response.read()
