"""Wires the stages into a running daemon: one task group, signals, reload, graceful stop.

    source (scan, catalog, look-ups) -> reconciler -> store (work queue) -> dispatcher -> channel

A SIGHUP reload validates the new file whole first; if it is good, the running pipeline drains
and a new one starts on the same store with a full resync. SIGTERM/SIGINT stop taking work, send
what is debounced now, let in-flight requests finish within `shutdown_timeout`, and return.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from daemon import __version__
from daemon.budget import RequestBudget
from daemon.channel import ChannelContext
from daemon.config import Config, secret_values
from daemon.dispatch import Dispatcher
from daemon.errors import ConfigError, StartupError
from daemon.http import build_app
from daemon.keycrm import KeycrmClient
from daemon.logs import scrubber
from daemon.plan import TEMPLATE_FIELDS
from daemon.reconcile import Reconciler
from daemon.source import Source
from daemon.store import Store, Timing, open_store
from daemon.telemetry import Metrics

__all__ = ["Daemon", "Parts", "assemble"]

log = structlog.get_logger("stocksync.pipeline")

_HOUSEKEEPING_EVERY = 60.0
_CATALOG_FIELDS = {f for f in TEMPLATE_FIELDS if f not in ("sku", "offer_id")}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _unacknowledged(per_status: dict[str, int]) -> int:
    """Items waiting for a push or in flight: the lag's work (held ones wait for a person)."""
    return per_status.get("pending", 0) + per_status.get("sending", 0)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def needs_catalog(config: Config) -> bool:
    """Whether any channel's keys use catalog fields (names, barcodes, properties)."""
    for channel in config.channels:
        if channel.rules.key_map is not None:
            continue
        for template in channel.rules.key_parts:
            for index, piece in enumerate(template):
                if index % 2 == 1 and (piece in _CATALOG_FIELDS or piece.startswith("prop[")):
                    return True
    return False


@dataclass(slots=True)
class Parts:
    """One pipeline's stages, built from one config."""

    config: Config
    dispatchers: dict[str, Dispatcher]
    reconciler: Reconciler
    source: Source
    client: KeycrmClient


def assemble(
    config: Config,
    store: Store,
    session: aiohttp.ClientSession,
    metrics: Metrics,
    *,
    debounce: float | None = None,
    clock: Callable[[], float] = time.time,
) -> Parts:
    """Build every stage. `debounce` overrides the config's (`once` pushes without waiting)."""
    sync = config.sync
    quiet = sync.debounce if debounce is None else debounce
    timing = Timing(quiet, max(quiet, sync.max_delay if debounce is None else quiet))
    dispatchers: dict[str, Dispatcher] = {}
    for channel in config.channels:
        adapter = channel.spec.build(
            channel.options, ChannelContext(channel.name, session, channel.timeout)
        )
        dispatchers[channel.name] = Dispatcher(
            channel, adapter, store, timing, metrics, clock=clock
        )

    def wake(name: str) -> None:
        dispatcher = dispatchers.get(name)
        if dispatcher is not None:
            dispatcher.notify()

    reconciler = Reconciler(
        store,
        config.channels,
        metrics,
        timing={name: timing for name in dispatchers},
        wake=wake,
        guard_fraction=config.sync.guard_fraction,
        clock=clock,
    )
    budget = RequestBudget(config.keycrm.requests_per_minute)
    metrics.keycrm_budget_limit.set(config.keycrm.requests_per_minute)
    client = KeycrmClient(config.keycrm, session, budget, metrics, details=config.needs_warehouses)
    source = Source(
        client,
        store,
        reconciler,
        metrics,
        poll_interval=config.keycrm.poll_interval,
        catalog_interval=config.keycrm.catalog_interval,
        needs_catalog=needs_catalog(config),
        clock=clock,
    )
    return Parts(config, dispatchers, reconciler, source, client)


class Daemon:
    """The long-running daemon: `run()` until `stop()`, a signal, or a fatal error."""

    def __init__(
        self,
        config: Config,
        *,
        reload: Callable[[], Config] | None = None,
        registry: CollectorRegistry | None = None,
        handle_signals: bool = True,
        notify: Callable[[str], None] | None = None,
        watchdog: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._reload = reload
        self._handle_signals = handle_signals
        self._notify = notify or (lambda _message: None)
        self._watchdog_every = watchdog
        self._clock = clock
        self.metrics = Metrics(
            registry or CollectorRegistry(), [c.name for c in config.channels], __version__
        )
        self._scrub = scrubber(secret_values(config))
        self.parts: Parts | None = None
        self.store: Store | None = None
        self._stop = anyio.Event()
        self._stopping = False
        self._next_config: Config | None = None
        self._resync_wanted = anyio.Event()
        self._resync_trigger = "signal"
        self.started = anyio.Event()
        self.bound_port: int | None = None

    # --- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop (SIGTERM, SIGINT)."""
        self._stopping = True
        self._stop.set()

    def resync(self, trigger: str) -> None:
        """Full resync (SIGUSR1, `POST /admin/resync`); merged with one already under way."""
        self.metrics.resyncs.labels(trigger=trigger).inc()
        self._resync_trigger = trigger
        self._resync_wanted.set()

    def webhook(self, skus: list[str]) -> None:
        if self.parts is not None:
            self.parts.source.request_lookup(skus)

    def reload(self) -> None:
        """SIGHUP: re-read and validate the file; keep the running config if it has faults."""
        if self._reload is None:
            return
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            config = self._reload()
        except ConfigError as exc:
            self.metrics.config_reloads.labels(result="error").inc()
            # The faults are the whole story; a traceback would bury them.
            faults = [f"{k}: {p}" for k, p in exc.faults]
            log.error("config.reload_failed", faults=faults)  # noqa: TRY400
            self._notify("READY=1")
            return
        self.metrics.config_reloads.labels(result="ok").inc()
        log.info("config.reloaded", channels=[c.name for c in config.channels])
        self._next_config = config
        self._stop.set()

    # --- HTTP controller -------------------------------------------------------------------------

    async def refresh_metrics(self) -> None:
        if self.store is None or self.parts is None:
            return
        counts = await self.store.counts()
        oldest = await self.store.oldest_pending()
        now = self._clock()
        for name in self.parts.dispatchers:
            per_status = counts.get(name, {})
            self.metrics.pending.labels(channel=name).set(_unacknowledged(per_status))
            self.metrics.rejected.labels(channel=name).set(per_status.get("rejected", 0))
            since = oldest.get(name)
            self.metrics.sync_lag.labels(channel=name).set(
                0 if since is None else max(0.0, now - since)
            )
        self.metrics.keycrm_budget_used.set(self.parts.client.budget.sent_in_window())
        self.metrics.first_scan_done.set(1 if self.parts.source.progress.first_scan_done else 0)

    async def readiness(self) -> str | None:
        parts = self.parts
        if parts is None or self.store is None:
            return "starting"
        if self._stopping:
            return "stopping"
        # A first scan still running does not make the daemon unready: at 100k SKUs it takes
        # half an hour, and webhooks must flow meanwhile. Its progress is in /status.
        reached = parts.client.last_success
        if reached is None:
            return "keyCRM has not answered since start"
        limit = 3 * parts.config.keycrm.poll_interval + parts.config.keycrm.timeout
        if self._clock() - reached > limit:
            return f"keyCRM has not answered for {self._clock() - reached:.0f}s"
        return None

    async def status(self) -> dict[str, Any]:
        parts = self.parts
        if parts is None or self.store is None:
            return {"version": __version__, "ready": False, "reason": "starting"}
        counts = await self.store.counts()
        oldest = await self.store.oldest_pending()
        now = self._clock()
        channels = {}
        for name, dispatcher in parts.dispatchers.items():
            per_status = counts.get(name, {})
            health = dispatcher.health
            since = oldest.get(name)
            channels[name] = {
                "type": dispatcher.config.type,
                "pending": _unacknowledged(per_status),
                "held": per_status.get("held", 0),
                "rejected": per_status.get("rejected", 0),
                "acknowledged": per_status.get("ok", 0),
                "in_flight": dispatcher.in_flight,
                "lag_seconds": 0.0 if since is None else round(max(0.0, now - since), 3),
                "paused": health.paused_until > now,
                "paused_until": _iso(health.paused_until) if health.paused_until > now else None,
                "up": not health.down,
                "last_error": health.last_error,
            }
        progress = parts.source.progress
        reason = await self.readiness()
        report: dict[str, Any] = {
            "version": __version__,
            "ready": reason is None,
            "reason": reason,
            "source": {
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
            },
            "channels": channels,
        }
        # Errors quote channel answers; a channel that echoes our credentials must not leak them.
        scrubbed: dict[str, Any] = self._scrub(report)
        return scrubbed

    # --- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped. Reloads replace the pipeline; the store stays open throughout."""
        self.store = open_store(self.config.daemon.state)
        # Pushes cut off by the death of the last process: their outcome is unknown.
        recovered = await self.store.recover(self._clock())
        if recovered:
            log.warning("daemon.recovered_in_flight", items=recovered)
        resync_first = False
        try:
            async with anyio.create_task_group() as life:
                if self._watchdog_every is not None:
                    life.start_soon(self._watchdog, self._watchdog_every)
                while True:
                    await self._run_pipeline(self.config, resync_first=resync_first)
                    if self._next_config is None or self._stopping:
                        break
                    self.config, self._next_config = self._next_config, None
                    self._scrub = scrubber(secret_values(self.config))
                    for channel in self.config.channels:
                        self.metrics.add_channel(channel.name)
                    self._stop = anyio.Event()
                    resync_first = True
                life.cancel_scope.cancel()
        finally:
            self._notify("STOPPING=1")
            await self.store.close()
            log.info("daemon.stopped")

    @asynccontextmanager
    async def _http(self, config: Config) -> AsyncIterator[None]:
        app = build_app(
            self,
            webhook_token=config.keycrm.webhook_token,
            admin_token=config.daemon.admin_token,
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, _, port = config.daemon.listen.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise StartupError(f"cannot listen on {config.daemon.listen}: {reason}") from exc
        addresses = runner.addresses
        self.bound_port = int(addresses[0][1]) if addresses else int(port)
        log.info("http.listening", listen=config.daemon.listen, port=self.bound_port)
        try:
            yield
        finally:
            await runner.cleanup()

    async def _run_pipeline(self, config: Config, *, resync_first: bool) -> None:
        assert self.store is not None
        store = self.store
        async with aiohttp.ClientSession() as session:
            parts = assemble(config, store, session, self.metrics, clock=self._clock)
            self.parts = parts
            counts = await store.counts()
            await parts.source.load_state()
            # The rules may have changed since the stored desired values were planned.
            replanned = await parts.reconciler.replan()
            log.info(
                "config.applied" if resync_first else "daemon.started",
                version=__version__,
                channels=[c.name for c in config.channels],
                pending=sum(_unacknowledged(c) for c in counts.values()),
                replanned=replanned,
                state=str(config.daemon.state),
            )
            async with self._http(config):
                self._notify("READY=1")
                self._notify(f"STATUS=syncing {len(parts.dispatchers)} channels")
                self.started.set()
                if resync_first:
                    self.resync("signal")
                await self._serve(parts)
            self.parts = None

    async def _serve(self, parts: Parts) -> None:
        config = parts.config
        async with anyio.create_task_group() as workers:
            for dispatcher in parts.dispatchers.values():
                workers.start_soon(dispatcher.run)
            async with anyio.create_task_group() as feeders:
                for dispatcher in parts.dispatchers.values():
                    feeders.start_soon(dispatcher.report)
                feeders.start_soon(parts.source.run_scans)
                feeders.start_soon(parts.source.run_catalog)
                feeders.start_soon(parts.source.run_lookups)
                feeders.start_soon(self._resyncs, parts)
                feeders.start_soon(self._housekeeping)
                if config.sync.resync_interval is not None:
                    feeders.start_soon(self._scheduled_resyncs, config.sync.resync_interval)
                if self._handle_signals:
                    feeders.start_soon(self._signals)
                await self._stop.wait()
                feeders.cancel_scope.cancel()
            deadline = self._clock() + config.daemon.shutdown_timeout
            log.info("daemon.draining", timeout=config.daemon.shutdown_timeout)
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as drains:
                    for dispatcher in parts.dispatchers.values():
                        drains.start_soon(dispatcher.drain, deadline)
            workers.cancel_scope.cancel()

    async def _resyncs(self, parts: Parts) -> None:
        assert self.store is not None
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted = anyio.Event()
            if parts.source.progress.resync and parts.source.progress.running:
                log.info("resync.merged", trigger=self._resync_trigger)
                continue
            await parts.reconciler.replan()
            forced = await self.store.force_all(self._clock())
            for dispatcher in parts.dispatchers.values():
                dispatcher.notify()
            parts.source.request_scan()
            log.info("resync.started", trigger=self._resync_trigger, items=forced)

    async def _scheduled_resyncs(self, every: float) -> None:
        """`sync.resync_interval`: heal drift made by hand in a channel, on a schedule."""
        while True:
            await anyio.sleep(every)
            self.resync("schedule")

    async def _housekeeping(self) -> None:
        assert self.store is not None
        while True:
            retention = self.config.daemon.history_retention
            pruned = await self.store.prune_history(self._clock() - retention)
            if pruned:
                log.info("history.pruned", rows=pruned)
            await anyio.sleep(_HOUSEKEEPING_EVERY)

    async def _watchdog(self, every: float) -> None:
        """Ping systemd from the event loop itself, so a wedged loop is restarted."""
        while True:
            message = "WATCHDOG=1"
            if self.parts is not None and self.store is not None:
                counts = await self.store.counts()
                pending = sum(_unacknowledged(c) for c in counts.values())
                message += f"\nSTATUS={len(self.parts.dispatchers)} channels, {pending} pending"
            self._notify(message)
            await anyio.sleep(every)

    async def _signals(self) -> None:
        wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
        with anyio.open_signal_receiver(*wanted) as received:
            async for signum in received:
                log.info("daemon.signal", signal=signal.Signals(signum).name)
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.stop()
                elif signum == signal.SIGUSR1:
                    self.resync("signal")
                elif signum == signal.SIGHUP:
                    self.reload()
