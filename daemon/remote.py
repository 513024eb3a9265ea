"""`stocksync status` and `stocksync resync`: a client of the running daemon's listener.

Both need only the daemon's address (`--url`, or `daemon.listen` from the file) and `resync`
the admin token; neither touches a channel secret (see `daemon.opsconfig`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import aiohttp
import anyio
import orjson
from pydantic import SecretStr

from daemon.neterrors import describe_network_error
from daemon.statusview import render, with_states

__all__ = ["DaemonUnreachable", "fetch_status", "request_resync", "show_status", "watch_status"]

_TIMEOUT = aiohttp.ClientTimeout(total=10)


class DaemonUnreachable(Exception):
    """No usable answer from the daemon; the message says where and why, in one line."""


async def fetch_status(url: str) -> dict[str, Any]:
    """The daemon's `/status` JSON, or DaemonUnreachable."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/status", timeout=_TIMEOUT) as response,
        ):
            body = await response.read()
            if response.status != 200:
                raise DaemonUnreachable(f"{url}/status answered HTTP {response.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DaemonUnreachable(
            f"cannot reach the daemon at {url}: {describe_network_error(exc)}"
        ) from exc
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DaemonUnreachable(f"{url}/status did not answer JSON: is it stocksync?") from exc
    if not isinstance(data, dict):
        raise DaemonUnreachable(f"{url}/status did not answer a JSON object")
    return data


async def show_status(url: str, *, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Print the status once: 0, or 1 when the daemon cannot be reached."""
    try:
        data = await fetch_status(url)
    except DaemonUnreachable as exc:
        print(exc, file=sys.stderr)
        return 1
    if as_json:
        out.write(orjson.dumps(with_states(data), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(data, time.time(), url), file=out)
    return 0


def _frame(url: str, data: dict[str, Any] | None, problem: str | None, every: float) -> str:
    stamp = time.strftime("%H:%M:%S")
    header = f"every {every:g}s, {stamp}; Ctrl-C to leave"
    body = render(data, time.time(), url) if data is not None else ""
    if problem:
        body = f"{body}\n\n{problem}" if body else problem
    return f"{header}\n{body}"


async def watch_status(url: str, *, every: float, out: TextIO = sys.stdout) -> int:
    """Redraw the status in place every `every` seconds until Ctrl-C (a live, top-like view).

    On a terminal the view is redrawn in place (rich); into a pipe or a file each refresh is
    appended, separated by a blank line, so `status --watch | tee` keeps a record. A daemon that
    stops answering is shown, not fatal: it may be restarting.
    """
    from rich.console import Console  # noqa: PLC0415 -- only --watch needs rich's start-up cost
    from rich.live import Live  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    console = Console(file=out)
    last: dict[str, Any] | None = None

    async def frame() -> str:
        nonlocal last
        try:
            last = await fetch_status(url)
            return _frame(url, last, None, every)
        except DaemonUnreachable as exc:
            return _frame(url, last, f"{exc} (retrying)", every)

    if not console.is_terminal:
        while True:
            print(await frame() + "\n", file=out, flush=True)
            await anyio.sleep(every)
    with Live(Text(await frame()), console=console, auto_refresh=False) as live:
        while True:
            await anyio.sleep(every)
            live.update(Text(await frame()), refresh=True)


async def request_resync(url: str, token: SecretStr | None) -> int:
    """`POST /admin/resync`; print one line; 0 when the daemon took it."""
    if token is None:
        print(
            "no admin token: set daemon.admin_token_env (or _file) in the config, or pass "
            "--token-env VARIABLE; or send SIGUSR1 instead (systemctl kill -s USR1 stocksync)",
            file=sys.stderr,
        )
        return 1
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/admin/resync", headers=headers, timeout=_TIMEOUT) as response,
        ):
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"cannot reach the daemon at {url}: {describe_network_error(exc)}", file=sys.stderr)
        return 1
    if status == 202:
        print(f"resync started ({url}); follow it with: stocksync status --url {url} --watch")
        return 0
    if status == 401:
        print("the daemon refused the admin token (HTTP 401)", file=sys.stderr)
    elif status == 404:
        print(
            "the daemon has no admin route (HTTP 404): its config sets no admin token",
            file=sys.stderr,
        )
    else:
        print(f"the daemon answered HTTP {status}", file=sys.stderr)
    return 1
