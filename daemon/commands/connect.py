"""`check-config --connect`: try every endpoint once with its credentials, and change nothing.

keyCRM gets one `GET /offers/stocks?limit=1` (a read; its answer must also look like a stock
page), and, when the order feed is on and the key was accepted, one `GET /order?limit=1`: a key
without order access is named there, but is no fault (the daemon then runs on scans and
webhooks). Each channel gets its adapter's `probe()`: one request the channel authenticates but
that changes nothing (see each adapter). Every endpoint is tried at once, each within its
timeout, and each says one of: reachable, auth refused, not found, unreachable (host and OS
reason), unexpected answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import anyio
import orjson

from daemon.config.settings import ChannelConfig, Config
from daemon.core.bodies import BodyTooLarge, read_body
from daemon.core.channel import ChannelContext, Probeable
from daemon.core.errors import ChannelError
from daemon.core.neterrors import describe
from daemon.keycrm.payloads import MalformedPage, parse_stock_page

__all__ = ["Reach", "connect"]


@dataclass(frozen=True, slots=True)
class Reach:
    """What trying one endpoint found."""

    what: str
    ok: bool
    verdict: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.what}: {self.verdict}" + (f" ({self.detail})" if self.detail else "")


async def connect(config: Config) -> list[Reach]:
    """One result per endpoint: keyCRM first, then the channels in the file's order."""
    results: dict[float, Reach] = {}
    async with aiohttp.ClientSession() as session:

        async def keycrm() -> None:
            results[0] = await _keycrm(config, session)
            if results[0].ok and config.keycrm.order_feed_interval > 0:
                results[0.5] = await _orders(config, session)

        async def channel(index: int, settings: ChannelConfig) -> None:
            results[index] = await _channel(settings, session)

        async with anyio.create_task_group() as group:
            group.start_soon(keycrm)
            for index, settings in enumerate(config.channels, start=1):
                group.start_soon(channel, index, settings)
    return [results[i] for i in sorted(results)]


async def _keycrm(config: Config, session: aiohttp.ClientSession) -> Reach:
    settings = config.keycrm
    url = f"{settings.base_url}/offers/stocks"
    headers = {
        "Authorization": f"Bearer {settings.api_key.get_secret_value()}",
        "Accept": "application/json",
    }
    try:
        async with session.get(
            url,
            params={"limit": "1"},
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
        ) as response:
            status = response.status
            body = await read_body(response)
    except BodyTooLarge as exc:
        return Reach("keycrm", False, "unexpected answer", str(exc))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Reach("keycrm", False, "unreachable", describe(exc, url, settings.timeout))
    if status in (401, 403):
        return Reach("keycrm", False, "auth refused", f"HTTP {status}: check the API key")
    if status in (404, 405):
        hint = "check base_url, e.g. https://openapi.keycrm.app/v1"
        return Reach("keycrm", False, "not found", f"HTTP {status}: {hint}")
    if status == 429:
        return Reach("keycrm", True, "reachable", "HTTP 429: rate limited, key not checked")
    if status != 200:
        return Reach("keycrm", False, "unexpected answer", f"HTTP {status}")
    try:
        parse_stock_page(orjson.loads(body))
    except (orjson.JSONDecodeError, MalformedPage) as exc:
        problem = "not JSON" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
        return Reach("keycrm", False, "unexpected answer", f"not a keyCRM stock page: {problem}")
    return Reach("keycrm", True, "reachable", "HTTP 200, API key accepted")


async def _orders(config: Config, session: aiohttp.ClientSession) -> Reach:
    """Whether the order feed may read `/order` with this key (refused: it will be off)."""
    settings = config.keycrm
    what, url = "keycrm orders", f"{settings.base_url}/order"
    try:
        async with session.get(
            url,
            params={"limit": "1"},
            headers={
                "Authorization": f"Bearer {settings.api_key.get_secret_value()}",
                "Accept": "application/json",
            },
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
        ) as response:
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Reach(what, False, "unreachable", describe(exc, url, settings.timeout))
    if status in (401, 403, 404):
        off = "the order feed will be off; scans and webhooks carry on"
        return Reach(what, True, "refused", f"HTTP {status}: {off}")
    if status in (200, 429):
        return Reach(what, True, "reachable", f"HTTP {status}: the order feed can poll")
    return Reach(what, False, "unexpected answer", f"HTTP {status}")


async def _channel(channel: ChannelConfig, session: aiohttp.ClientSession) -> Reach:
    what = f'channel "{channel.name}"'
    adapter = channel.spec.build(
        channel.options, ChannelContext(channel.name, session, channel.timeout)
    )
    if not isinstance(adapter, Probeable):
        return Reach(what, True, "not checked", f"type {channel.type} has no probe")
    url = str(getattr(channel.options, "base_url", ""))
    try:
        with anyio.fail_after(channel.timeout + 1):
            probe = await adapter.probe()
    except TimeoutError as exc:
        return Reach(what, False, "unreachable", describe(exc, url, channel.timeout))
    except ChannelError as exc:
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientError | TimeoutError):
            return Reach(what, False, "unreachable", describe(cause, url, channel.timeout))
        return Reach(what, False, "unexpected answer", str(exc))
    return Reach(what, probe.ok, probe.verdict, probe.detail)
