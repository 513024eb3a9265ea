"""`stocksync status`, `resync` and `guard release`: a client of the running daemon's listener.

They need only the daemon's address (`--url`, or `daemon.listen` from the file) and `resync`
and `guard release` the admin token; none touches a channel secret (see `daemon.config.ops`).
Each takes a merchant (`?merchant=`): `status` and `resync` default to every merchant the daemon
serves, `guard release` needs one when it serves several.
"""

from __future__ import annotations

import getpass
import socket
import sys
import time
from typing import Any, TextIO

import aiohttp
import anyio
import orjson
from pydantic import SecretStr

from daemon.commands.statusview import render, with_states
from daemon.core.errors import ConfigError
from daemon.core.neterrors import describe_network_error

__all__ = [
    "DaemonUnreachable",
    "fetch_status",
    "release_guard",
    "request_resync",
    "show_status",
    "watch_status",
]

_TIMEOUT = aiohttp.ClientTimeout(total=10)


class DaemonUnreachable(Exception):
    """No usable answer from the daemon; the message says where and why, in one line."""


def _query(merchant: str | None) -> dict[str, str]:
    return {} if merchant is None else {"merchant": merchant}


async def fetch_status(url: str, merchant: str | None = None) -> dict[str, Any]:
    """The daemon's `/status` JSON (of one merchant, or all), or DaemonUnreachable."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/status", params=_query(merchant), timeout=_TIMEOUT) as response,
        ):
            body = await response.read()
            if response.status == 404 and merchant is not None:
                raise DaemonUnreachable(await _no_such_merchant(url, merchant))
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


async def _no_such_merchant(url: str, merchant: str) -> str:
    """Why the daemon has no such merchant: its file is broken (with the faults), or it is not
    one of those it serves (named, if it says)."""
    line = f"the daemon at {url} serves no merchant {merchant!r}"
    try:
        served = (await fetch_status(url)).get("merchants")
    except DaemonUnreachable:
        return line
    if isinstance(served, dict) and isinstance(served.get(merchant), dict):
        # Named in its folder but not running: a file that failed validation, say why.
        report = served[merchant]
        faults = "".join(f"\n  {fault}" for fault in report.get("faults", []))
        return f"merchant {merchant} is not served: {report.get('reason') or 'unknown'}{faults}"
    if isinstance(served, dict):
        return f"{line} (it serves: {', '.join(served) or 'none'})"
    return f"{line} (it serves one merchant: --merchant is not needed)"


async def show_status(
    url: str, *, as_json: bool, merchant: str | None = None, out: TextIO = sys.stdout
) -> int:
    """Print the status (every merchant's, or one's) once: 0, or 1 when the daemon cannot be
    reached or serves no such merchant."""
    try:
        data = await fetch_status(url, merchant)
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


async def watch_status(
    url: str, *, every: float, merchant: str | None = None, out: TextIO = sys.stdout
) -> int:
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
            last = await fetch_status(url, merchant)
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


async def request_resync(url: str, token: SecretStr | None, *, merchant: str | None = None) -> int:
    """`POST /admin/resync` (every merchant, or one); print one line; 0 when the daemon took it."""
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
            session.post(
                f"{url}/admin/resync", headers=headers, params=_query(merchant), timeout=_TIMEOUT
            ) as response,
        ):
            status = response.status
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"cannot reach the daemon at {url}: {describe_network_error(exc)}", file=sys.stderr)
        return 1
    if status == 202:
        which = "" if merchant is None else f" of {merchant}"
        flag = "" if merchant is None else f" --merchant {merchant}"
        print(
            f"resync{which} started ({url}); follow it with: "
            f"stocksync status --url {url}{flag} --watch"
        )
        return 0
    if status == 401:
        print("the daemon refused the admin token (HTTP 401)", file=sys.stderr)
    elif status == 404 and merchant is not None and _names_merchant(body):
        print(await _no_such_merchant(url, merchant), file=sys.stderr)
    elif status == 404:
        print(
            "the daemon has no admin route (HTTP 404): its config sets no admin token",
            file=sys.stderr,
        )
    else:
        print(f"the daemon answered HTTP {status}", file=sys.stderr)
    return 1


def _names_merchant(body: bytes) -> bool:
    """A 404 of an admin route that is there, for a merchant it does not serve (not one from a
    daemon without admin routes)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(answer, dict) and "merchant" in str(answer.get("error", ""))


def _holds(data: dict[str, Any], channel: str | None) -> list[str]:
    """One line per channel on hold (or with zeroes held): how many, since when, why."""
    lines = []
    for name, info in data.get("channels", {}).items():
        if channel is not None and name != channel:
            continue
        hold = info.get("guard") or {}
        held = int(info.get("held") or 0)
        if not hold and not held:
            continue
        since = f" since {hold['since']}" if hold.get("since") else ""
        why = f": {hold['reason']}" if hold.get("reason") else ""
        lines.append(f"{name}: {held} zeros held{since}{why}")
    return lines


def _operator() -> str:
    """Who runs this command, for the history (`user@host`); no secret, no environment dump."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def release_guard(
    url: str,
    token: SecretStr | None,
    channel: str | None,
    *,
    merchant: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """`stocksync guard release`: show what the guard holds (`/status`), then release it
    (`POST /admin/guard/release`); 0 when the daemon released it or nothing was held.

    A daemon serving several merchants is asked about one (`merchant`); without one it is a
    ConfigError naming them, before anything is released."""
    if token is None:
        print(
            "no admin token: set daemon.admin_token_env (or _file) in the config, or pass "
            "--token-env VARIABLE",
            file=sys.stderr,
        )
        return 1
    try:
        data = await fetch_status(url, merchant)
    except DaemonUnreachable as exc:
        print(exc, file=sys.stderr)
        return 1
    served = data.get("merchants")
    if isinstance(served, dict):
        known = ", ".join(served) or "none"
        raise ConfigError(
            [("--merchant", f"required: the daemon at {url} serves several merchants ({known})")]
        )
    if channel is not None and channel not in data.get("channels", {}):
        print(f"the daemon has no channel named {channel!r}", file=sys.stderr)
        return 1
    shown = _holds(data, channel)
    if not shown:
        where = f" for {channel}" if channel else ""
        print(f"the mass-change guard holds nothing{where}", file=out)
        return 0
    print("releasing:", *shown, sep="\n  ", file=out)
    headers = {
        "Authorization": f"Bearer {token.get_secret_value()}",
        "X-Stocksync-Operator": _operator(),
    }
    params = _query(merchant) | ({} if channel is None else {"channel": channel})
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/admin/guard/release", headers=headers, params=params, timeout=_TIMEOUT
            ) as response,
        ):
            status = response.status
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"cannot reach the daemon at {url}: {describe_network_error(exc)}", file=sys.stderr)
        return 1
    if status == 200:
        released = orjson.loads(body).get("released", {})
        for name, count in sorted(released.items()):
            print(f"{name}: {count} zeros released; they are pushed now", file=out)
        flag = "" if merchant is None else f" --merchant {merchant}"
        print(
            f"follow them with: stocksync status --url {url}{flag}; stocksync history{flag} SKU",
            file=out,
        )
        return 0
    if status == 401:
        print("the daemon refused the admin token (HTTP 401)", file=sys.stderr)
    elif status == 404:
        print(
            "the daemon has no such channel or no admin route (HTTP 404): its config sets no "
            "admin token",
            file=sys.stderr,
        )
    else:
        answer = body.decode(errors="replace")
        print(f"the daemon answered HTTP {status}: {answer}", file=sys.stderr)
    return 1
