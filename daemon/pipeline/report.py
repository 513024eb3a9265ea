"""One merchant's sections of `/status`, read from its stages and the store's counts.

Pure functions of what was read, so the pipeline reads the store once per report and the
shell wraps the sections in the process's own fields (version, readiness, replica).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from daemon.pipeline.assembly import Parts

__all__ = ["channel_sections", "feed_section", "source_section", "unacknowledged"]


def unacknowledged(per_status: dict[str, int]) -> int:
    """Items waiting for a push or in flight: the lag's work (held ones wait for a person)."""
    return per_status.get("pending", 0) + per_status.get("sending", 0)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def channel_sections(
    parts: Parts,
    counts: dict[str, dict[str, int]],
    oldest: dict[str, float],
    holds: dict[str, dict[str, Any] | None],
    now: float,
) -> dict[str, dict[str, Any]]:
    """Per channel: its queue, its guard hold, its lag, and whether the channel is up."""
    channels = {}
    for name, dispatcher in parts.dispatchers.items():
        per_status = counts.get(name, {})
        health = dispatcher.health
        since = oldest.get(name)
        channels[name] = {
            "type": dispatcher.config.type,
            "pending": unacknowledged(per_status),
            "held": per_status.get("held", 0),
            "guard": holds.get(name),
            "rejected": per_status.get("rejected", 0),
            "acknowledged": per_status.get("ok", 0),
            "in_flight": dispatcher.in_flight,
            "lag_seconds": 0.0 if since is None else round(max(0.0, now - since), 3),
            "paused": health.paused_until > now,
            "paused_until": _iso(health.paused_until) if health.paused_until > now else None,
            "up": not health.down,
            "last_error": health.last_error,
        }
    return channels


def source_section(parts: Parts, now: float) -> dict[str, Any]:
    """keyCRM's side: the scan and catalog passes, the look-up queue, the request budget, the
    order feed."""
    progress = parts.source.progress
    return {
        "scan_running": progress.running,
        "resync_running": progress.resync,
        "scan_page": progress.page,
        "scan_last_page": progress.last_page,
        "scan_eta": _rounded(progress.scan_eta(now)),
        "first_scan_done": progress.first_scan_done,
        "catalog_running": progress.catalog_running,
        "catalog_page": progress.catalog_page,
        "catalog_last_page": progress.catalog_last_page,
        "catalog_eta": _rounded(progress.catalog_eta(now)),
        "scans_completed": progress.scans_completed,
        "last_scan_success": _iso(progress.last_success),
        "last_scan_duration_seconds": progress.last_duration,
        "last_catalog_refresh": _iso(progress.catalog_at),
        "last_error": progress.last_error,
        "lookups_queued": parts.source.lookups_queued,
        "budget_requests_per_minute": parts.config.keycrm.requests_per_minute,
        "budget_used_last_minute": parts.client.budget.sent_in_window(),
        "order_feed": feed_section(parts, now),
    }


def feed_section(parts: Parts, now: float) -> dict[str, Any]:
    """The order feed: on, off or refused by keyCRM, its watermark and how far behind it is."""
    feed = parts.feed
    if feed is None:
        return {"state": "off"}
    progress = feed.progress
    return {
        "state": progress.state,
        "interval_seconds": feed.interval,
        "watermark": _iso(progress.watermark),
        "lag_seconds": round(feed.lag(now), 1),
        "last_poll": _iso(progress.last_poll),
        "last_pages": progress.last_pages,
        "behind": progress.behind,
        "orders_seen": progress.orders_seen,
        "skus_queued": progress.skus_queued,
        "last_error": progress.last_error,
    }
