"""Every metric stocksync exports, in one place. Names and labels are a contract (design.md).

Metrics never carry a SKU or an item key as a label: per-item detail lives in the logs, in
`/status` and in `stocksync history`. Every family is created up front with a zero-valued series
per configured channel, so a dashboard or an alert never meets a missing series.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

__all__ = ["INCOMPLETE_REASONS", "PUSH_OUTCOMES", "SKIP_REASONS", "STORE_OPERATIONS", "Metrics"]

PUSH_OUTCOMES = ("ok", "retry", "rejected", "failed")
SKIP_REASONS = ("empty_key", "unmapped", "no_warehouses")
#: why a keyCRM scan did not count as complete (`daemon.keycrm.completeness` decides which)
INCOMPLETE_REASONS = (
    "total_mismatch",
    "total_changed",
    "short_page",
    "paging_contradiction",
    "no_total",
    "page_limit",
)
STORE_OPERATIONS = ("read", "write")

# `_created` series double every counter and histogram and no dashboard reads them (design.md).
disable_created_metrics()  # type: ignore[no-untyped-call]
_PROPAGATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The metric families, registered on the given registry (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry, channels: Iterable[str], version: str) -> None:
        self.registry = registry
        r = registry
        # stocksync exports its own registry (tests make fresh ones), so the process and
        # platform collectors of the default registry are registered here too.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.sync_lag = Gauge(
            "stocksync_sync_lag_seconds",
            "Age of the oldest desired value the channel has not acknowledged; 0 when in sync.",
            ["channel"],
            registry=r,
        )
        self.propagation = Histogram(
            "stocksync_propagation_seconds",
            "From a change seen in keyCRM to the channel's acknowledgement.",
            ["channel"],
            buckets=_PROPAGATION_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "stocksync_pending_items",
            "Items whose desired value is not acknowledged.",
            ["channel"],
            registry=r,
        )
        self.rejected = Gauge(
            "stocksync_rejected_items",
            "Items parked after a permanent error.",
            ["channel"],
            registry=r,
        )
        self.channel_up = Gauge(
            "stocksync_channel_up",
            "0 while the channel is paused (auth failure, circuit open).",
            ["channel"],
            registry=r,
        )
        self.push_requests = Counter(
            "stocksync_push_requests",
            "Requests to a channel, by outcome (ok, retry, rejected, failed).",
            ["channel", "outcome"],
            registry=r,
        )
        self.push_duration = Histogram(
            "stocksync_push_request_duration_seconds",
            "Duration of one request to a channel.",
            ["channel"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.keycrm_requests = Counter(
            "stocksync_keycrm_requests",
            "Requests to keyCRM by kind (lookup, orders, scan, catalog) and HTTP status (or "
            "error).",
            ["kind", "status"],
            registry=r,
        )
        self._order_feed_families(r)
        self.last_scan_success = Gauge(
            "stocksync_keycrm_last_scan_success_timestamp_seconds",
            "End of the last complete keyCRM scan (Unix time).",
            registry=r,
        )
        self.scan_duration = Gauge(
            "stocksync_keycrm_scan_duration_seconds",
            "Length of the last complete keyCRM scan.",
            registry=r,
        )
        self.keycrm_budget_used = Gauge(
            "stocksync_keycrm_budget_used_requests",
            "keyCRM requests sent in the last 60 s (the budget is requests_per_minute).",
            registry=r,
        )
        self.keycrm_budget_limit = Gauge(
            "stocksync_keycrm_budget_limit_requests",
            "keyCRM requests allowed per 60 s (requests_per_minute).",
            registry=r,
        )
        self.skus_tracked = Gauge("stocksync_skus_tracked", "SKUs known from keyCRM.", registry=r)
        self.offers_skipped = Counter(
            "stocksync_keycrm_offers_skipped",
            "keyCRM offers skipped while reading, by reason (no_sku, duplicate_sku).",
            ["reason"],
            registry=r,
        )
        self.records_skipped = Counter(
            "stocksync_records_skipped",
            "Records that gave a channel no item, by reason (empty_key, unmapped, no_warehouses).",
            ["channel", "reason"],
            registry=r,
        )
        self.webhook_events = Counter(
            "stocksync_webhook_events",
            "keyCRM webhook deliveries, accepted or rejected.",
            ["outcome"],
            registry=r,
        )
        self.resyncs = Counter(
            "stocksync_resyncs",
            "Full resyncs by trigger (signal, http, schedule).",
            ["trigger"],
            registry=r,
        )
        self.config_reloads = Counter(
            "stocksync_config_reloads",
            "Configuration reloads by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.guard_blocked = Counter(
            "stocksync_guard_blocked",
            "Pushes held back by the mass-change guard.",
            ["channel"],
            registry=r,
        )
        self.guard_held = Gauge(
            "stocksync_guard_held_items",
            "Zeroes of a channel the mass-change guard put on hold: they wait for an operator's "
            "release (stocksync guard release) or for keyCRM to show their stock again.",
            ["channel"],
            registry=r,
        )
        self.incomplete_scans = Counter(
            "stocksync_keycrm_incomplete_scans",
            "Scans that did not count as complete, by reason (see daemon/keycrm/completeness.py).",
            ["reason"],
            registry=r,
        )
        self.store_errors = Counter(
            "stocksync_store_errors",
            "Store reads/writes that failed (full disk, I/O error); readiness is 503 while "
            "writes fail.",
            ["operation"],
            registry=r,
        )
        self.lookups_dropped = Counter(
            "stocksync_lookups_dropped",
            "Webhook SKUs not looked up (bad_sku, refused by keyCRM, overflow of the queue); "
            "the next scan carries them.",
            ["reason"],
            registry=r,
        )
        self.leader = Gauge(
            "stocksync_leader",
            "1 on the replica that holds the merchant's lease (always 1 with SQLite).",
            ["merchant"],
            registry=r,
        )
        self.config_mismatch = Gauge(
            "stocksync_config_mismatch",
            "1 on a replica whose config (what is pushed where) differs from the leader's; "
            "always 0 with SQLite.",
            ["merchant"],
            registry=r,
        )
        self.drift_items = Counter(
            "stocksync_drift_items",
            "Items whose read-back value differed from the acknowledged one.",
            ["channel"],
            registry=r,
        )
        self.verify_last_success = Gauge(
            "stocksync_verify_last_success_timestamp_seconds",
            "End of the last complete read-back pass of the channel (Unix time).",
            ["channel"],
            registry=r,
        )
        self.verify_interval = Gauge(
            "stocksync_verify_interval_seconds",
            "How often the channel is read back (0: never); alerts compare it with the last pass.",
            ["channel"],
            registry=r,
        )
        self.first_scan_done = Gauge(
            "stocksync_keycrm_first_scan_done",
            "1 once a complete keyCRM scan is on record (this run or an earlier one); 0 while "
            "a cold start's first scan runs (the daemon is ready and takes webhooks meanwhile).",
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "stocksync_event_loop_lag_seconds",
            "How late the event loop woke a ticker due every 0.25 s: a stall here delays "
            "/healthz, webhooks and pushes alike.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.build_info = Gauge(
            "stocksync_build_info", "Always 1; the version is a label.", ["version"], registry=r
        )
        self.build_info.labels(version=version).set(1)
        for outcome in ("accepted", "rejected"):
            self.webhook_events.labels(outcome=outcome)
        for trigger in ("signal", "http", "schedule"):
            self.resyncs.labels(trigger=trigger)
        for result in ("ok", "error"):
            self.config_reloads.labels(result=result)
        for kind in ("lookup", "orders", "scan", "catalog"):
            self.keycrm_requests.labels(kind=kind, status="200")
        for reason in ("no_sku", "duplicate_sku"):
            self.offers_skipped.labels(reason=reason)
        for reason in INCOMPLETE_REASONS:
            self.incomplete_scans.labels(reason=reason)
        for reason in ("bad_sku", "refused", "overflow"):
            self.lookups_dropped.labels(reason=reason)
        for operation in STORE_OPERATIONS:
            self.store_errors.labels(operation=operation)
        self.leader.labels(merchant="default").set(1)
        self.config_mismatch.labels(merchant="default").set(0)
        for channel in channels:
            self.add_channel(channel)

    def _order_feed_families(self, r: CollectorRegistry) -> None:
        """The order feed's (`daemon.keycrm.feed`); its requests count as kind="orders"."""
        self.order_feed_lag = Gauge(
            "stocksync_order_feed_lag_seconds",
            "Now minus the order feed's watermark (the time up to which every changed order is "
            "read); 0 while the feed is off.",
            registry=r,
        )
        self.order_feed_up = Gauge(
            "stocksync_order_feed_up",
            "1 while the order feed polls keyCRM; 0 when it is off (by config, or keyCRM "
            "refused the route: 401, 403, 404).",
            registry=r,
        )
        self.order_feed_orders = Counter(
            "stocksync_order_feed_orders",
            "Changed orders the feed read (an order seen again unchanged is not counted).",
            registry=r,
        )
        self.order_feed_skus = Counter(
            "stocksync_order_feed_skus",
            "SKUs of changed orders' lines the feed queued for a look-up.",
            registry=r,
        )

    def add_channel(self, channel: str) -> None:
        """Create every per-channel series at zero (channel up until proven otherwise)."""
        self.sync_lag.labels(channel=channel)
        self.propagation.labels(channel=channel)
        self.pending.labels(channel=channel)
        self.rejected.labels(channel=channel)
        self.channel_up.labels(channel=channel).set(1)
        for outcome in PUSH_OUTCOMES:
            self.push_requests.labels(channel=channel, outcome=outcome)
        self.push_duration.labels(channel=channel)
        self.guard_blocked.labels(channel=channel)
        self.guard_held.labels(channel=channel)
        for reason in SKIP_REASONS:
            self.records_skipped.labels(channel=channel, reason=reason)
        self.drift_items.labels(channel=channel)
        self.verify_last_success.labels(channel=channel)
        self.verify_interval.labels(channel=channel)
