"""Shared fixtures: loopback servers for the fakes, config files, a running daemon."""

from __future__ import annotations

import inspect
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import stamina
import structlog
from aiohttp import web

from adapters import ADAPTERS
from daemon.config.settings import Config, load_config
from daemon.shell.daemon import Daemon
from daemon.simulator import FakeInventoryApi, FakeKeycrm

Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp is asyncio-only.
    return "asyncio"


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    """keyCRM retries cost no time in tests, but still happen (up to 6 attempts)."""
    with stamina.set_testing(True, attempts=6):
        yield


@pytest.fixture(autouse=True)
def _capture_logs() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an aiohttp app on 127.0.0.1, on a free port; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


class World:
    """A fake keyCRM, fake Inventory Update APIs, and config to run stocksync against them."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Serve) -> None:
        self.tmp_path = tmp_path
        self._monkeypatch = monkeypatch
        self._serve = serve
        self.keycrm_key = "kc-" + secrets.token_hex(8)
        self.webhook_token = "wh-" + secrets.token_hex(8)
        self.admin_token = "ad-" + secrets.token_hex(8)
        self.keycrm = FakeKeycrm(self.keycrm_key)
        self.shops: dict[str, FakeInventoryApi] = {}
        self.urls: dict[str, str] = {}
        self.secrets = [self.keycrm_key, self.webhook_token, self.admin_token]
        monkeypatch.setenv("T_KEYCRM_KEY", self.keycrm_key)
        monkeypatch.setenv("T_WEBHOOK_TOKEN", self.webhook_token)
        monkeypatch.setenv("T_ADMIN_TOKEN", self.admin_token)

    async def start(self) -> None:
        self.urls["keycrm"] = await self._serve(self.keycrm.app())

    async def add_shop(self, name: str) -> FakeInventoryApi:
        token = f"{name}-" + secrets.token_hex(8)
        self._monkeypatch.setenv(f"T_TOKEN_{name.upper().replace('-', '_')}", token)
        shop = FakeInventoryApi(token)
        self.shops[name] = shop
        self.urls[name] = await self._serve(shop.app())
        self.secrets.append(token)
        return shop

    def write_config(
        self,
        *,
        channels: str | None = None,
        sync: str = 'debounce = "0s"\nmax_delay = "1s"',
        keycrm: str = "",
        daemon: str = "",
        listen: str = "127.0.0.1:0",
        order_feed: str = "0",
    ) -> Path:
        if channels is None:
            channels = "".join(self.shop_table(name) for name in self.shops)
        text = f"""
[daemon]
state = "{self.tmp_path / "state.db"}"
listen = "{listen}"
shutdown_timeout = "3s"
admin_token_env = "T_ADMIN_TOKEN"
{daemon}

[keycrm]
base_url = "{self.urls["keycrm"]}/v1"
api_key_env = "T_KEYCRM_KEY"
webhook_token_env = "T_WEBHOOK_TOKEN"
requests_per_minute = 6000
poll_interval = "1h"
order_feed_interval = "{order_feed}"
{keycrm}

[sync]
{sync}

{channels}
"""
        path = self.tmp_path / "stocksync.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def shop_table(self, name: str, extra: str = 'store = "S1"') -> str:
        return f"""
[[channel]]
name = "{name}"
type = "inventory_api"
base_url = "{self.urls[name]}"
token_env = "T_TOKEN_{name.upper().replace("-", "_")}"
rate_limit = "1000/s"
concurrency = 8
timeout = "2s"
{extra}
"""

    def config(self, **kwargs: Any) -> Config:
        return load_config(self.write_config(**kwargs), ADAPTERS)


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Serve) -> World:
    w = World(tmp_path, monkeypatch, serve)
    await w.start()
    return w


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    """Run a daemon in the background for the body of the block, then stop it gracefully."""
    async with anyio.create_task_group() as group:
        group.start_soon(daemon.run)
        with anyio.fail_after(10):
            await daemon.started.wait()
        try:
            yield daemon
        finally:
            daemon.stop()


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Poll a condition (plain or awaitable) until it holds or time runs out.

    `lambda: cheap() and await_me()` works: the awaitable is only made when `cheap()` holds.
    """
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(0.01)


async def channel_idle(daemon: Daemon, channel: str) -> bool:
    """Nothing of this channel pending or in flight: every push so far is settled in the store."""
    parts, store = daemon.parts, daemon.store
    if parts is None or store is None:
        return False
    per_status = (await store.counts()).get(channel, {})
    waiting = per_status.get("pending", 0) + per_status.get("sending", 0)
    return waiting == 0 and parts.dispatchers[channel].in_flight == 0


async def idle(daemon: Daemon) -> bool:
    """Nothing pending or in flight in any channel."""
    parts = daemon.parts
    if parts is None:
        return False
    return all([await channel_idle(daemon, name) for name in parts.dispatchers])
