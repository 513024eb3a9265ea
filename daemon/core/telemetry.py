"""Every metric stocksync exports, in one place. Names and labels are a contract (design.md).

Metrics never carry a SKU or an item key as a label: per-item detail lives in the logs, in
`/status` and in `stocksync history`. Every family is exported from the start: a merchant's
families get a zero-valued series per configured channel the moment its view is made, so a
dashboard or an alert never meets a missing series.

Two kinds of family (design.md, "Many merchants in one deployment"):

- **per merchant**, labelled `merchant` (`daemon.core.merchant_metrics`): every family with a
  `channel` label, every keyCRM family (requests, budget, scans, offers skipped, SKUs tracked,
  look-ups dropped), resyncs, the leader and config-mismatch gauges. A pipeline records only
  through its merchant's `MerchantMetrics` view (`Metrics.for_merchant`); a single-merchant
  config exports `merchant="default"`.
- **per process**, without `merchant`: what the shell shares among merchants or what has no
  merchant at all. `stocksync_webhook_events_total` (a rejected delivery's unknown token names
  no merchant, and one listener takes every merchant's webhooks), `stocksync_config_reloads_total`
  (one SIGHUP re-reads every file; a merchant file that fails shows in
  `stocksync_merchants{role="broken"}`), `stocksync_store_errors_total` (the store connections
  are the shell's; which merchant suffers is in `/status`), the event-loop lag (one loop runs
  every merchant) and the build info.

`stocksync_merchants{role}` counts this replica's merchants: `leading` and `standby` (from the
`stocksync_leader` series of the merchants it has a view for, read at each scrape, so it
cannot disagree with them) and `broken` (merchant files that failed validation at the last load
or reload, `Metrics.set_broken`; such a merchant also counts as leading or standby while its
previous config still runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

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
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from daemon.core.merchant_metrics import (
    INCOMPLETE_REASONS,
    PUSH_OUTCOMES,
    SKIP_REASONS,
    MerchantFamilies,
    MerchantMetrics,
)

__all__ = [
    "INCOMPLETE_REASONS",
    "MERCHANT_ROLES",
    "PUSH_OUTCOMES",
    "SKIP_REASONS",
    "STORE_OPERATIONS",
    "MerchantMetrics",
    "Metrics",
]

STORE_OPERATIONS = ("read", "write")
MERCHANT_ROLES = ("leading", "standby", "broken")

# `_created` series double every counter and histogram and no dashboard reads them (design.md).
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The metric families, registered on the given registry (tests pass a fresh one), and the
    per-merchant views of them (`for_merchant`, `forget_merchant`)."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        r = registry
        # stocksync exports its own registry (tests make fresh ones), so the process and
        # platform collectors of the default registry are registered here too.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._families = MerchantFamilies(r)
        self._views: dict[str, MerchantMetrics] = {}
        self._broken: frozenset[str] = frozenset()
        #: the per-merchant gauges the shell sets itself (`.labels(merchant=...)`)
        self.leader = self._families.leader
        self.config_mismatch = self._families.config_mismatch
        r.register(_MerchantRoles(self))
        self.webhook_events = Counter(
            "stocksync_webhook_events",
            "keyCRM webhook deliveries, accepted or rejected.",
            ["outcome"],
            registry=r,
        )
        self.config_reloads = Counter(
            "stocksync_config_reloads",
            "Configuration reloads by result (ok, error).",
            ["result"],
            registry=r,
        )
        # What the counter cannot say: whether the config running now is the file on disk.
        self.config_reload_ok = Gauge(
            "stocksync_config_last_reload_successful",
            "0 after a reload (SIGHUP) refused the main file (the previous config runs, and a "
            "restart would fail); 1 at start and after a reload that applied. A merchant file "
            'that fails is stocksync_merchants{role="broken"}.',
            registry=r,
        )
        self.config_reload_ok.set(1)
        self.store_errors = Counter(
            "stocksync_store_errors",
            "Store reads/writes that failed (full disk, I/O error); readiness is 503 while "
            "writes fail.",
            ["operation"],
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
        for result in ("ok", "error"):
            self.config_reloads.labels(result=result)
        for operation in STORE_OPERATIONS:
            self.store_errors.labels(operation=operation)

    def for_merchant(self, merchant: str, channels: Iterable[str]) -> MerchantMetrics:
        """The merchant's view, its zero series created for these channels (and `leader` at 1).
        Asked again for the same merchant (a reload), the same view, with any new channels."""
        view = self._views.get(merchant)
        if view is None:
            view = self._views[merchant] = MerchantMetrics(self._families, merchant, self.registry)
        view.add_channels(channels)
        return view

    def forget_merchant(self, merchant: str) -> None:
        """Remove every series of the merchant (one a reload removed): no stale series for an
        alert to fire on. A later `for_merchant` starts it again from zero. Stop the merchant's
        pipeline first: its old view still records, and would bring back what it touches."""
        self._views.pop(merchant, None)
        for family in self._families.every():
            family.remove_by_labels({"merchant": merchant})

    def set_broken(self, merchants: Iterable[str]) -> None:
        """The merchant files that failed validation at the last load or reload."""
        self._broken = frozenset(merchants)

    def merchant_roles(self) -> dict[str, int]:
        """How many merchants this replica leads, stands by for, and could not load."""
        roles = dict.fromkeys(MERCHANT_ROLES, 0)
        for family in self.leader.collect():
            for sample in family.samples:
                if sample.labels["merchant"] in self._views:
                    roles["leading" if sample.value == 1 else "standby"] += 1
        roles["broken"] = len(self._broken)
        return roles


class _MerchantRoles(Collector):
    """`stocksync_merchants{role}`, counted at each scrape (see the module docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "stocksync_merchants",
            "Merchants of this replica by role: leading, standby, broken (file failed "
            "validation; it also counts as leading or standby while its previous config runs).",
            labels=["role"],
        )
        for role, count in self._metrics.merchant_roles().items():
            family.add_metric([role], count)
        yield family
