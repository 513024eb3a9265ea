"""The metric families of one merchant's work, and the view a merchant's pipeline records through.

Every family with a `channel` label and every keyCRM family carries `merchant` (design.md,
"Many merchants in one deployment"; `default` for a single-merchant config). A pipeline never
names its merchant: it records through a `MerchantMetrics`, whose attributes are named as they
always were (`view.sync_lag.labels(channel=c)`, `view.skus_tracked.set(n)`) and fill `merchant` in
themselves, so no call site can forget the label or put another merchant's name there.
`daemon.core.telemetry.Metrics` owns the families and hands out the views.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "INCOMPLETE_REASONS",
    "LOOKUP_DROP_REASONS",
    "OFFER_SKIP_REASONS",
    "PUSH_OUTCOMES",
    "RESYNC_TRIGGERS",
    "SKIP_REASONS",
    "Labelled",
    "MerchantFamilies",
    "MerchantMetrics",
]

PUSH_OUTCOMES = ("ok", "retry", "rejected", "failed")
SKIP_REASONS = ("empty_key", "unmapped", "no_warehouses")
OFFER_SKIP_REASONS = ("no_sku", "duplicate_sku")
LOOKUP_DROP_REASONS = ("bad_sku", "refused", "overflow")
RESYNC_TRIGGERS = ("signal", "http", "schedule")
KEYCRM_KINDS = ("lookup", "orders", "scan", "catalog")
#: why a keyCRM scan did not count as complete (`daemon.keycrm.completeness` decides which)
INCOMPLETE_REASONS = (
    "total_mismatch",
    "total_changed",
    "short_page",
    "paging_contradiction",
    "no_total",
    "page_limit",
)

_PROPAGATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

M = TypeVar("M", bound=MetricWrapperBase)


class Labelled(Generic[M]):
    """A family seen by one merchant: `labels(...)` is the family's, with `merchant` filled in."""

    __slots__ = ("_family", "_merchant")

    def __init__(self, family: M, merchant: str) -> None:
        self._family = family
        self._merchant = merchant

    def labels(self, **labels: str) -> M:
        """The series for these labels and this merchant (passing `merchant` is a TypeError)."""
        return self._family.labels(merchant=self._merchant, **labels)


class MerchantFamilies:
    """The families labelled by merchant, registered once on the process's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sync_lag = Gauge(
            "stocksync_sync_lag_seconds",
            "Age of the oldest desired value the channel has not acknowledged; 0 when in sync.",
            ["merchant", "channel"],
            registry=r,
        )
        self.propagation = Histogram(
            "stocksync_propagation_seconds",
            "From a change seen in keyCRM to the channel's acknowledgement.",
            ["merchant", "channel"],
            buckets=_PROPAGATION_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "stocksync_pending_items",
            "Items whose desired value is not acknowledged.",
            ["merchant", "channel"],
            registry=r,
        )
        self.rejected = Gauge(
            "stocksync_rejected_items",
            "Items parked after a permanent error.",
            ["merchant", "channel"],
            registry=r,
        )
        self.channel_up = Gauge(
            "stocksync_channel_up",
            "0 while the channel is paused (auth failure, circuit open).",
            ["merchant", "channel"],
            registry=r,
        )
        self.push_requests = Counter(
            "stocksync_push_requests",
            "Requests to a channel, by outcome (ok, retry, rejected, failed).",
            ["merchant", "channel", "outcome"],
            registry=r,
        )
        self.push_duration = Histogram(
            "stocksync_push_request_duration_seconds",
            "Duration of one request to a channel.",
            ["merchant", "channel"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.keycrm_requests = Counter(
            "stocksync_keycrm_requests",
            "Requests to keyCRM by kind (lookup, scan, catalog) and HTTP status (or error).",
            ["merchant", "kind", "status"],
            registry=r,
        )
        self.last_scan_success = Gauge(
            "stocksync_keycrm_last_scan_success_timestamp_seconds",
            "End of the last complete keyCRM scan (Unix time).",
            ["merchant"],
            registry=r,
        )
        # Whether keyCRM answers, however seldom the daemon asks (alert StocksyncKeycrmDown):
        # `up` falls at the first failed request and rises at the next good answer.
        self.keycrm_up = Gauge(
            "stocksync_keycrm_up",
            "1 while keyCRM's last answer was usable; 0 after a request that failed (no "
            "answer, 5xx, 429, the key refused, a malformed page) until one succeeds again.",
            ["merchant"],
            registry=r,
        )
        self.keycrm_last_success = Gauge(
            "stocksync_keycrm_last_success_timestamp_seconds",
            "When keyCRM last gave a usable answer to any request (Unix time); the start of "
            "the merchant in this process before its first.",
            ["merchant"],
            registry=r,
        )
        self.scan_duration = Gauge(
            "stocksync_keycrm_scan_duration_seconds",
            "Length of the last complete keyCRM scan.",
            ["merchant"],
            registry=r,
        )
        self.keycrm_budget_used = Gauge(
            "stocksync_keycrm_budget_used_requests",
            "keyCRM requests sent in the last 60 s (the budget is requests_per_minute).",
            ["merchant"],
            registry=r,
        )
        self.keycrm_budget_limit = Gauge(
            "stocksync_keycrm_budget_limit_requests",
            "keyCRM requests allowed per 60 s (requests_per_minute).",
            ["merchant"],
            registry=r,
        )
        self.skus_tracked = Gauge(
            "stocksync_skus_tracked", "SKUs known from keyCRM.", ["merchant"], registry=r
        )
        self.offers_skipped = Counter(
            "stocksync_keycrm_offers_skipped",
            "keyCRM offers skipped while reading, by reason (no_sku, duplicate_sku).",
            ["merchant", "reason"],
            registry=r,
        )
        self.scan_pages_unchanged = Counter(
            "stocksync_keycrm_scan_pages_unchanged",
            "Scan pages whose bytes equalled the same page of the last complete scan: their "
            "SKUs' scan marks moved without parsing them (a rescan that finds nothing changed "
            "has all its pages here).",
            ["merchant"],
            registry=r,
        )
        self.records_skipped = Counter(
            "stocksync_records_skipped",
            "Records that gave a channel no item, by reason (empty_key, unmapped, no_warehouses).",
            ["merchant", "channel", "reason"],
            registry=r,
        )
        self.resyncs = Counter(
            "stocksync_resyncs",
            "Full resyncs by trigger (signal, http, schedule).",
            ["merchant", "trigger"],
            registry=r,
        )
        self.guard_blocked = Counter(
            "stocksync_guard_blocked",
            "Pushes held back by the mass-change guard.",
            ["merchant", "channel"],
            registry=r,
        )
        self.guard_held = Gauge(
            "stocksync_guard_held_items",
            "Zeroes of a channel the mass-change guard put on hold: they wait for an operator's "
            "release (stocksync guard release) or for keyCRM to show their stock again.",
            ["merchant", "channel"],
            registry=r,
        )
        self.incomplete_scans = Counter(
            "stocksync_keycrm_incomplete_scans",
            "Scans that did not count as complete, by reason (see daemon/keycrm/completeness.py).",
            ["merchant", "reason"],
            registry=r,
        )
        self.lookups_dropped = Counter(
            "stocksync_lookups_dropped",
            "Webhook SKUs not looked up (bad_sku, refused by keyCRM, overflow of the queue); "
            "the next scan carries them.",
            ["merchant", "reason"],
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
            ["merchant", "channel"],
            registry=r,
        )
        self.verify_last_success = Gauge(
            "stocksync_verify_last_success_timestamp_seconds",
            "End of the last complete read-back pass of the channel (Unix time).",
            ["merchant", "channel"],
            registry=r,
        )
        self.verify_interval = Gauge(
            "stocksync_verify_interval_seconds",
            "How often the channel is read back (0: never); alerts compare it with the last pass.",
            ["merchant", "channel"],
            registry=r,
        )
        self.verify_expected = Gauge(
            "stocksync_verify_pass_expected_seconds",
            "What a read-back pass of the channel's acknowledged items costs at its read share "
            "(verify_share of its rate limit); StocksyncVerifyStale allows for it.",
            ["merchant", "channel"],
            registry=r,
        )
        self.verify_started = Gauge(
            "stocksync_verify_pass_started_timestamp_seconds",
            "When the channel's current (or last) read-back pass started (Unix time); 0 before "
            "the first pass of this run.",
            ["merchant", "channel"],
            registry=r,
        )
        self.first_scan_done = Gauge(
            "stocksync_keycrm_first_scan_done",
            "1 once a complete keyCRM scan is on record (this run or an earlier one); 0 while "
            "a cold start's first scan runs (the daemon is ready and takes webhooks meanwhile).",
            ["merchant"],
            registry=r,
        )
        # The order feed's (`daemon.keycrm.feed`); its requests count as kind="orders".
        self.order_feed_lag = Gauge(
            "stocksync_order_feed_lag_seconds",
            "Now minus the order feed's watermark (the time up to which every changed order is "
            "read); 0 while the feed is off.",
            ["merchant"],
            registry=r,
        )
        self.order_feed_up = Gauge(
            "stocksync_order_feed_up",
            "1 while the order feed polls keyCRM; 0 when it is off (by config, or keyCRM "
            "refused the route: 401, 403, 404).",
            ["merchant"],
            registry=r,
        )
        self.order_feed_orders = Counter(
            "stocksync_order_feed_orders",
            "Changed orders the feed read (an order seen again unchanged is not counted).",
            ["merchant"],
            registry=r,
        )
        self.order_feed_skus = Counter(
            "stocksync_order_feed_skus",
            "SKUs of changed orders' lines the feed queued for a look-up.",
            ["merchant"],
            registry=r,
        )

    def every(self) -> tuple[MetricWrapperBase, ...]:
        """Every family here (what `Metrics.forget_merchant` clears a merchant's series from)."""
        return tuple(v for v in vars(self).values() if isinstance(v, MetricWrapperBase))


class MerchantMetrics:
    """One merchant's metrics, under the names the pipeline has always used.

    Families with more labels than `merchant` are `Labelled` (`.labels(channel=...)`); those
    with `merchant` alone are that merchant's series itself (`.set(...)`). Built by
    `Metrics.for_merchant`, which has created every zero series already."""

    def __init__(
        self,
        families: MerchantFamilies,
        merchant: str,
        registry: CollectorRegistry,
    ) -> None:
        f, m = families, merchant
        self.merchant = merchant
        #: the process's registry (for reading a sample back: `once` counts what it pushed)
        self.registry = registry
        self.sync_lag = Labelled(f.sync_lag, m)
        self.propagation = Labelled(f.propagation, m)
        self.pending = Labelled(f.pending, m)
        self.rejected = Labelled(f.rejected, m)
        self.channel_up = Labelled(f.channel_up, m)
        self.push_requests = Labelled(f.push_requests, m)
        self.push_duration = Labelled(f.push_duration, m)
        self.records_skipped = Labelled(f.records_skipped, m)
        self.guard_blocked = Labelled(f.guard_blocked, m)
        self.guard_held = Labelled(f.guard_held, m)
        self.drift_items = Labelled(f.drift_items, m)
        self.verify_last_success = Labelled(f.verify_last_success, m)
        self.verify_interval = Labelled(f.verify_interval, m)
        self.verify_expected = Labelled(f.verify_expected, m)
        self.verify_started = Labelled(f.verify_started, m)
        self.keycrm_requests = Labelled(f.keycrm_requests, m)
        self.offers_skipped = Labelled(f.offers_skipped, m)
        self.incomplete_scans = Labelled(f.incomplete_scans, m)
        self.lookups_dropped = Labelled(f.lookups_dropped, m)
        self.resyncs = Labelled(f.resyncs, m)
        self.last_scan_success: Gauge = f.last_scan_success.labels(merchant=m)
        self.scan_duration: Gauge = f.scan_duration.labels(merchant=m)
        self.keycrm_up: Gauge = f.keycrm_up.labels(merchant=m)
        self.keycrm_last_success: Gauge = f.keycrm_last_success.labels(merchant=m)
        self.keycrm_budget_used: Gauge = f.keycrm_budget_used.labels(merchant=m)
        self.keycrm_budget_limit: Gauge = f.keycrm_budget_limit.labels(merchant=m)
        self.skus_tracked: Gauge = f.skus_tracked.labels(merchant=m)
        self.first_scan_done: Gauge = f.first_scan_done.labels(merchant=m)
        self.order_feed_lag: Gauge = f.order_feed_lag.labels(merchant=m)
        self.order_feed_up: Gauge = f.order_feed_up.labels(merchant=m)
        self.order_feed_orders: Counter = f.order_feed_orders.labels(merchant=m)
        self.order_feed_skus: Counter = f.order_feed_skus.labels(merchant=m)
        self.scan_pages_unchanged: Counter = f.scan_pages_unchanged.labels(merchant=m)
        #: 1 while this replica leads the merchant (the shell sets it; 1 from the start, as with
        #: SQLite, where the one process always leads)
        self.leader: Gauge = f.leader.labels(merchant=m)
        self.config_mismatch: Gauge = f.config_mismatch.labels(merchant=m)
        self._channels: set[str] = set()
        self.leader.set(1)
        # Up until proven otherwise, and "last answered" counts from now: a merchant that just
        # started has the alert's five minutes to reach keyCRM.
        self.keycrm_up.set(1)
        self.keycrm_last_success.set(time.time())
        for trigger in RESYNC_TRIGGERS:
            self.resyncs.labels(trigger=trigger)
        for kind in KEYCRM_KINDS:
            self.keycrm_requests.labels(kind=kind, status="200")
        for reason in OFFER_SKIP_REASONS:
            self.offers_skipped.labels(reason=reason)
        for reason in INCOMPLETE_REASONS:
            self.incomplete_scans.labels(reason=reason)
        for reason in LOOKUP_DROP_REASONS:
            self.lookups_dropped.labels(reason=reason)

    def add_channels(self, channels: Iterable[str]) -> None:
        """Create every per-channel series at zero (channel up until proven otherwise); a
        channel seen before keeps its series and values."""
        for channel in channels:
            if channel in self._channels:
                continue
            self._channels.add(channel)
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
            self.verify_expected.labels(channel=channel)
            self.verify_started.labels(channel=channel)
