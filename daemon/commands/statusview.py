"""`/status` as a person reads it: relative times, one word per channel, progress with an ETA.

Pure functions over the JSON the daemon serves, so the same words appear in `status`,
`status --watch` and `status --json` (which adds `state` to each channel). A daemon serving a
merchants folder answers `merchants: {name: ...}`: each merchant is a block, a line with its role
and readiness, then its keyCRM lines and channels as a single merchant's are shown.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["DOWN_AFTER", "ago", "channel_state", "duration", "render", "with_states"]

#: a channel failing with changes this old waiting is as good as down for the merchant
DOWN_AFTER = 300.0
#: changes waiting this long, with errors, make a channel degraded
DEGRADED_AFTER = 60.0


def duration(seconds: float | None) -> str:
    """`41s`, `2m 10s`, `3h 5m`, `2d 4h`: two units at most, like a person would say it."""
    if seconds is None:
        return "-"
    total = round(max(0.0, seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def _timestamp(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def ago(value: Any, now: float) -> str:
    """`never`, `just now`, `2m ago` for an ISO 8601 time or Unix seconds."""
    at = _timestamp(value)
    if at is None:
        return "never"
    age = now - at
    if age < 1:
        return "just now"
    return f"{duration(age)} ago"


def channel_state(channel: dict[str, Any]) -> str:
    """`up`, `degraded` or `down`.

    A channel refusing our credentials is down; so is one that has failed with changes waiting
    for `DOWN_AFTER` seconds (unreachable for long is down for the merchant, whatever the cause).
    Throttled (paused), or failing for a minute, or slow beyond `DOWN_AFTER`, is degraded.
    """
    if channel.get("up") is False:
        return "down"
    lag = float(channel.get("lag_seconds") or 0.0)
    failing = bool(channel.get("last_error")) and int(channel.get("pending") or 0) > 0
    if failing and lag >= DOWN_AFTER:
        return "down"
    if channel.get("paused") or (failing and lag >= DEGRADED_AFTER) or lag >= DOWN_AFTER:
        return "degraded"
    return "up"


def with_states(data: dict[str, Any]) -> dict[str, Any]:
    """The daemon's status with `state` added to each channel (for `status --json`), of every
    merchant when it serves several."""
    merchants = data.get("merchants")
    if isinstance(merchants, dict):
        return {**data, "merchants": {name: with_states(m) for name, m in merchants.items()}}
    if "channels" not in data:
        return data
    channels = {
        name: {**channel, "state": channel_state(channel)}
        for name, channel in data.get("channels", {}).items()
    }
    return {**data, "channels": channels}


def _progress(what: str, page: Any, last: Any, eta: Any) -> str:
    of = f"/{last}" if last else ""
    text = f"{what} page {page or 0}{of}"
    if isinstance(eta, int | float):
        text += f", ETA {duration(eta)}"
    return text


def _source_lines(source: dict[str, Any], now: float) -> list[str]:
    scan = f"last complete scan {ago(source.get('last_scan_success'), now)}"
    if source.get("last_scan_duration_seconds") is not None:
        scan += f" (took {duration(source['last_scan_duration_seconds'])})"
    if source.get("scan_running"):
        kind = "resync" if source.get("resync_running") else "scanning"
        scan += "; " + _progress(
            kind, source.get("scan_page"), source.get("scan_last_page"), source.get("scan_eta")
        )
        if source.get("first_scan_done") is False:
            scan += " (first scan since a cold start)"
    budget = (
        f"{source.get('budget_used_last_minute', '?')}/"
        f"{source.get('budget_requests_per_minute', '?')} requests in the last minute"
    )
    catalog = f"catalog refreshed {ago(source.get('last_catalog_refresh'), now)}"
    if source.get("catalog_running"):
        catalog += "; " + _progress(
            "reading",
            source.get("catalog_page"),
            source.get("catalog_last_page"),
            source.get("catalog_eta"),
        )
    lines = [
        f"keyCRM    {scan}",
        f"          {catalog}; budget {budget}",
        f"          look-ups queued {source.get('lookups_queued', 0)}; "
        f"last error: {source.get('last_error') or '-'}",
    ]
    feed = source.get("order_feed")
    if isinstance(feed, dict):
        lines.append(f"          {_feed_line(feed, now)}")
    return lines


def _feed_line(feed: dict[str, Any], now: float) -> str:
    """The order feed in a line: off, refused (and why), or how far behind its watermark is."""
    state = feed.get("state")
    if state == "off":
        return "order feed off"
    if state == "refused":
        return f"order feed OFF, refused by keyCRM: {feed.get('last_error') or '-'}"
    line = (
        f"order feed every {duration(feed.get('interval_seconds'))}, "
        f"lag {duration(feed.get('lag_seconds'))}, last poll {ago(feed.get('last_poll'), now)}"
    )
    if feed.get("behind"):
        line += " (BEHIND: catching up)"
    if feed.get("last_error"):
        line += f"; last error: {feed['last_error']}"
    return line


def _replica_line(replica: dict[str, Any]) -> str:
    """One replica of several (PostgreSQL): its role, who leads, and the shared look-up queue,
    which is what an operator paged for "no leader" needs first."""
    if "error" in replica:
        return f"replica: {replica['error']}"
    leader = replica.get("leader") or "nobody (the lease has run out)"
    queued = replica.get("lookups_queued", 0)
    oldest = replica.get("lookups_oldest_seconds") or 0.0
    waiting = f"{queued} look-ups queued" + (f", oldest {duration(oldest)}" if queued else "")
    line = (
        f"replica {replica.get('replica', '?')}: {replica.get('role', '?')} of merchant "
        f"{replica.get('merchant', '?')}; leader {leader}, epoch {replica.get('epoch', '-')}; "
        f"{waiting}"
    )
    config = replica.get("config")
    if isinstance(config, dict) and config.get("differs_from_leader"):
        line += (
            f"\nconfig differs from leader's: this replica runs {config.get('fingerprint')} "
            f"(generation {config.get('generation')}), the leader "
            f"{config.get('leader_fingerprint')} (generation {config.get('leader_generation')})"
        )
    return line


def _readiness(data: dict[str, Any]) -> str:
    return "ready" if data.get("ready") else f"NOT READY: {data.get('reason') or 'unknown'}"


def render(data: dict[str, Any], now: float, url: str = "") -> str:
    """The whole status as lines of text (what `status` prints and `--watch` redraws)."""
    where = f" at {url}" if url else ""
    lines = [f"stocksync {data.get('version', '?')}{where}  {_readiness(data)}"]
    replica = data.get("replica")
    if isinstance(replica, dict):
        lines.append(_replica_line(replica))
    merchants = data.get("merchants")
    if isinstance(merchants, dict):
        unready = [name for name, merchant in merchants.items() if not merchant.get("ready")]
        summary = f"merchants: {len(merchants) - len(unready)} of {len(merchants)} ready"
        lines.append(summary + (f"; not ready: {', '.join(unready)}" if unready else ""))
        for name, merchant in merchants.items():
            lines += ["", *_merchant_lines(name, merchant, now)]
        return "\n".join(lines)
    lines += _merchant_body(data, now, data.get("merchant"))
    return "\n".join(lines)


def _merchant_lines(name: str, data: dict[str, Any], now: float) -> list[str]:
    """One merchant of several: `merchant acme: serving, ready`, then what a single merchant's
    status shows (a broken one: the faults of its file)."""
    lines = [f"merchant {name}: {data.get('role', '?')}, {_readiness(data)}"]
    lines += [f"          {fault}" for fault in data.get("faults", [])]
    return lines + _merchant_body(data, now, name)


def _merchant_body(data: dict[str, Any], now: float, merchant: Any) -> list[str]:
    """keyCRM's lines, the channel table and the guard's holds of one merchant."""
    lines: list[str] = []
    source = data.get("source")
    if isinstance(source, dict):
        lines += _source_lines(source, now)
    channels = data.get("channels", {})
    if channels:
        width = max(12, *(len(name) for name in channels))
        lines.append("")
        lines.append(
            f"{'channel':<{width}}  {'state':<8} {'pending':>7} {'rejected':>8} "
            f"{'acked':>7} {'lag':>8}  last error"
        )
        for name, channel in channels.items():
            state = channel_state(channel)
            lag = channel.get("lag_seconds") or 0.0
            error = channel.get("last_error") or "-"
            if channel.get("paused_until"):
                error = f"paused until {channel['paused_until']}; {error}"
            lines.append(
                f"{name:<{width}}  {state:<8} {channel.get('pending', 0):>7} "
                f"{channel.get('rejected', 0):>8} {channel.get('acknowledged', 0):>7} "
                f"{duration(lag) if lag else '0s':>8}  {error}"
            )
        lines += _hold_lines(channels, now, merchant)
    return lines


def _hold_lines(channels: dict[str, Any], now: float, merchant: Any = None) -> list[str]:
    """A channel on hold by the mass-change guard: what, since when, why, and the way out (its
    zeroes go out only when a person says so)."""
    lines = []
    flag = f" --merchant {merchant}" if merchant not in (None, "default") else ""
    for name, channel in channels.items():
        hold = channel.get("guard")
        if not isinstance(hold, dict):
            continue
        lines.append(
            f"HELD      {name}: {hold.get('held', 0)} zeros held by the mass-change guard since "
            f"{ago(hold.get('since'), now)}: {hold.get('reason') or '?'}"
        )
        lines.append(
            f"          if keyCRM is right: stocksync guard release{flag} --channel {name}; "
            "if not, fix it (the hold ends as stock comes back)"
        )
    if lines:
        lines.insert(0, "")
    return lines
