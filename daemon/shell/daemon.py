"""The daemon shell: what lives as long as the process, and the pipelines that come and go in it.

    source (scan, catalog, look-ups) -> reconciler -> store (work queue) -> dispatcher -> channel

The shell owns what the process has once: the HTTP listener, signal handling, the telemetry,
and on PostgreSQL the replica (its pool and leases). Each merchant it serves is a
`ServedMerchant` (`daemon.shell.merchant`): its own state, keyCRM budget, look-up queue and
pipelines, so one merchant's trouble (a state that cannot be opened, a key keyCRM refuses, a
channel down, an unexpected failure) is that merchant's alone. A single-merchant file is one
merchant, `default`, and behaves exactly as before: its faults at start are the process's.
A SIGHUP validates the new files, binds a changed listener first, then restarts the merchants
whose config changed, starts the ones added and stops the ones removed; a fault of the main
file keeps everything running as it was, a fault of one merchant's file keeps that merchant's
previous config. Signals are handled the whole time: one that arrives during a reload or a drain
waits its turn, and a SIGTERM still stops within `shutdown_timeout`. SIGTERM/SIGINT stop taking
work, send what is debounced now, let in-flight requests finish within `shutdown_timeout`, and
return.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import structlog
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from daemon import __version__
from daemon.config.deployment import Deployment
from daemon.config.fingerprint import config_fingerprint
from daemon.config.settings import Config, secret_values
from daemon.core import redact
from daemon.core.errors import (
    ConfigError,
    LookupQueueFull,
    StartupError,
    StocksyncError,
    StoreUnavailable,
)
from daemon.core.telemetry import Metrics
from daemon.keycrm.budget import RequestBudget
from daemon.keycrm.lookups import LookupQueue
from daemon.pipeline.assembly import Parts, assemble
from daemon.pipeline.merchant import MerchantPipeline
from daemon.replicas.replica import Replica
from daemon.shell.deadline import commit_within
from daemon.shell.http import build_app
from daemon.shell.listener import Listener
from daemon.shell.logs import scrubber
from daemon.shell.looplag import watch_loop
from daemon.shell.merchant import ServedMerchant
from daemon.store import Store
from daemon.store.pg.lease import Lease

__all__ = ["Daemon", "Parts", "assemble"]

log = structlog.get_logger("stocksync.pipeline")

#: what a merchant's failure at start up is, for the operator: the state cannot be opened
_OPEN_FAILURES = (StocksyncError, OSError, sqlite3.Error)
#: what `/readyz` adds on a replica whose config is not the leader's
CONFIG_DIFFERS = "config differs from leader's"
#: how long a webhook waits for its SKUs to be committed before it is answered 503: the
#: answer, 202 or 503, leaves within 5 s whatever the store does (`daemon.shell.deadline`)
WEBHOOK_STORE_WAIT = 4.5


class Daemon:
    """The long-running daemon: `run()` until `stop()`, a signal, or a fatal error."""

    def __init__(
        self,
        config: Config | Deployment,
        *,
        reload: Callable[[], Config | Deployment] | None = None,
        registry: CollectorRegistry | None = None,
        handle_signals: bool = True,
        notify: Callable[[str], None] | None = None,
        watchdog: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        deployment = _deployment(config)
        self.deployment = deployment
        self._reload = reload
        self._handle_signals = handle_signals
        self._notify = notify or (lambda _message: None)
        self._watchdog_every = watchdog
        self._clock = clock
        self.metrics = Metrics(registry or CollectorRegistry(), __version__)
        self.metrics.set_broken(deployment.broken)
        self._scrub = scrubber(_secrets(deployment))
        #: every merchant this process serves (leads or stands by for), by id
        self.merchants: dict[str, ServedMerchant] = {
            name: self._served(config) for name, config in deployment.merchants.items()
        }
        self._stopping = False
        self.started = anyio.Event()
        self.bound_port: int | None = None
        #: the process's lifetime task group, while `run` runs (webhook writes run in it)
        self._life: anyio.abc.TaskGroup | None = None
        #: where a merchant added by a reload is started, while merchants are served
        self._serving: anyio.abc.TaskGroup | None = None
        self._listener: Listener | None = None
        #: set on PostgreSQL: this process is one replica of several
        self.replica: Replica | None = None
        self._terminate = anyio.Event()
        #: per merchant name, set when its serving ends (state closed, lock released): a
        #: merchant removed and added back by the next reload waits for its old tenancy
        self._tenancies: dict[str, anyio.Event] = {}

    def _served(self, config: Config) -> ServedMerchant:
        return ServedMerchant(config, self.metrics, clock=self._clock, on_started=self._on_started)

    # --- the one merchant of a single-merchant file (what tests and tools of one merchant use) ---

    @property
    def single(self) -> bool:
        """A single-merchant file: its merchant's faults at start are the process's."""
        return self.deployment.folder is None

    def _sole(self) -> ServedMerchant:
        if len(self.merchants) != 1:
            raise RuntimeError("this daemon serves several merchants: use .merchants[name]")
        return next(iter(self.merchants.values()))

    @property
    def config(self) -> Config:
        return self._sole().config

    @property
    def pipeline(self) -> MerchantPipeline | None:
        return self._sole().pipeline

    @property
    def parts(self) -> Parts | None:
        """The running pipeline's stages (None while none runs)."""
        return self._sole().parts

    @property
    def store(self) -> Store | None:
        return self._sole().store

    @property
    def budget(self) -> RequestBudget:
        return self._sole().budget

    @property
    def lookups(self) -> LookupQueue | None:
        return self._sole().lookups

    def _merchant(self, name: str | None) -> list[ServedMerchant]:
        """The merchant named (KeyError when not served here), or every one for None."""
        if name is None:
            return list(self.merchants.values())
        return [self.merchants[name]]

    # --- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop (SIGTERM, SIGINT)."""
        self._stopping = True
        for served in self.merchants.values():
            served.stop()
        self._terminate.set()

    def resync(self, trigger: str, merchant: str | None = None) -> None:
        """Full resync (SIGUSR1, `POST /admin/resync`) of every merchant or one (KeyError for
        one not served here); merged with one under way, kept for the next pipeline."""
        targets = self._merchant(merchant)
        if merchant is None and self.replica is not None and not self.single:
            # Every merchant this replica leads; a standby's wish would otherwise wait for the
            # day its merchant moves here, and resync it then for no reason.
            targets = [s for s in targets if s.leading]
        for served in targets:
            served.resync(trigger)

    async def release_guard(
        self, channel: str | None, by: str, merchant: str | None = None
    ) -> dict[str, int]:
        """`POST /admin/guard/release`: the zeroes the guard holds go out (one channel, or all),
        recorded in the history. KeyError for a merchant or channel not configured;
        `StoreUnavailable` when no pipeline runs here (starting, a standby replica) or the state
        cannot write. Without `merchant`, a single-merchant daemon's one."""
        served = self._sole() if merchant is None else self.merchants[merchant]
        return await served.release_guard(channel, by)

    async def webhook(self, merchant: str, skus: list[str]) -> None:
        """A webhook's SKUs into the merchant's durable look-up queue: on PostgreSQL the one its
        leader consumes (any replica takes them), else its state file's. Returns once they are
        committed, so a crash after the 2xx loses none; raises `StoreUnavailable` when they
        cannot be (the webhook is refused, and keyCRM may send it again)."""
        served = self.merchants.get(merchant)
        if served is None:
            raise StoreUnavailable(f"merchant {merchant} is not served now", operation="write")
        replica, queue = self.replica, served.lookups
        if replica is not None:
            await commit_within(
                self._life, WEBHOOK_STORE_WAIT, lambda: replica.enqueue(merchant, skus)
            )
            return
        if queue is None:
            raise StoreUnavailable("the state store is not open yet", operation="write")
        overflow = await commit_within(self._life, WEBHOOK_STORE_WAIT, lambda: queue.push(skus))
        if overflow:
            served.view.lookups_dropped.labels(reason="overflow").inc(overflow)
            log.warning("keycrm.lookup_queue_full", merchant=merchant, dropped=overflow)
            raise LookupQueueFull(overflow, queue.cap)

    def _webhook_tokens(self) -> Mapping[str, SecretStr]:
        tokens = {}
        for name, served in self.merchants.items():
            token = served.config.keycrm.webhook_token
            if token is not None:
                tokens[name] = token
        return tokens

    async def reload(self) -> None:
        """SIGHUP: re-read and validate the files, bind a changed listener; on a fault of the
        main file keep running as before and say why."""
        if self._reload is None:
            return
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            deployment = _deployment(self._reload())
            if self._listener is not None:
                try:
                    self.bound_port = await self._listener.rebind(deployment.daemon.listen)
                except OSError as exc:
                    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                    raise ConfigError(
                        [("daemon.listen", f"cannot listen there: {reason}")]
                    ) from exc
        except ConfigError as exc:
            self.metrics.config_reloads.labels(result="error").inc()
            self.metrics.config_reload_ok.set(0)
            log.error(  # noqa: TRY400 (a fault of the file, not of the program: no traceback)
                "config.reload_failed",
                faults=[f"{k}: {p}" for k, p in exc.faults],
                hint="still running the previous configuration",
            )
            self._notify("READY=1")
            return
        redact.update(_secrets(deployment))  # a rotated secret is masked from now on
        self.metrics.config_reloads.labels(result="ok" if not deployment.broken else "error").inc()
        self.metrics.config_reload_ok.set(1)
        log.info("config.reloaded", merchants=sorted(deployment.merchants))
        await self._apply(deployment)
        self._notify("READY=1")

    async def _apply(self, new: Deployment) -> None:
        """Restart the merchants whose config changed (every reload restarts a single
        merchant, as before), start the added ones, stop the removed ones. On PostgreSQL the
        replica learns the new set (and each config's fingerprint, published with the leases):
        a removed merchant led here drains and is handed over."""
        for name, faults in new.broken.items():
            log.error(
                "merchant.config_invalid",
                merchant=name,
                faults=[f"{k}: {p}" for k, p in faults],
                hint="still running its previous configuration"
                if name in self.merchants
                else "not started",
            )
        added = []
        for name, config in new.merchants.items():
            served = self.merchants.get(name)
            if served is None or served.trouble is not None:
                if served is not None:
                    served.stop()
                added.append(self._start(name, config))
            elif self.single or config != served.config:
                served.reload(config)
        removed = []
        for name in set(self.merchants) - set(new.merchants) - set(new.broken):
            log.info("merchant.removed", merchant=name)
            gone = self.merchants.pop(name)
            gone.removed = True
            gone.stop()
            removed.append(gone)
        replica = self.replica
        if replica is not None:
            fingerprints = {n: config_fingerprint(s.config) for n, s in self.merchants.items()}
            fingerprints.update({n: config_fingerprint(c) for n, c in new.merchants.items()})
            try:
                await replica.set_merchants(list(self.merchants), fingerprints)
            except StoreUnavailable as exc:
                log.error("replica.merchants_not_updated", error=str(exc))  # noqa: TRY400
            for served in added:
                if served.name in replica.stores:
                    self._attach(served)
        for gone in removed:
            if gone.store is None or replica is not None:  # nothing of it records any more
                self.metrics.forget_merchant(gone.name)
        kept = {n: self.merchants[n].config for n in new.broken if n in self.merchants}
        self.deployment = Deployment(
            new.path,
            new.daemon,
            {**new.merchants, **kept},
            {n: f for n, f in new.broken.items() if n not in kept},
            new.folder,
        )
        self._scrub = scrubber(_secrets(self.deployment))
        self.metrics.set_broken(self.deployment.broken)

    def _start(self, name: str, config: Config) -> ServedMerchant:
        """A merchant added (or fixed) by a reload: served from now on (on PostgreSQL, once
        the replica has its store, and led wherever the share-out gives it)."""
        served = self._served(config)
        self.merchants[name] = served
        if self._serving is not None and self.replica is None:
            self._serving.start_soon(self._open_and_serve, served)
        log.info("merchant.added", merchant=name)
        return served

    # --- HTTP controller -------------------------------------------------------------------------

    async def refresh_metrics(self) -> None:
        replica = self.replica
        for name, served in list(self.merchants.items()):
            if replica is not None and name in replica.keepers:
                differs = replica.config_differs(name)
                served.view.config_mismatch.set(1 if differs else 0)
            await served.refresh_metrics()

    async def readiness(self) -> str | None:
        if self._stopping:
            return "stopping"
        if self.single:
            return self._merchant_readiness(self._sole())
        if not self.started.is_set():
            return "starting"
        if self.replica is not None:
            return self.replica.health.reason
        return None  # each merchant's own trouble is in /status

    def _merchant_readiness(self, served: ServedMerchant) -> str | None:
        if self.replica is not None and not served.leading and served.store is not None:
            # A healthy standby is ready: the Service keeps sending it webhooks to queue. One
            # that cannot reach the database is not: it could queue none of them.
            return served.store.health.reason
        return served.readiness()

    def readiness_note(self) -> str | None:
        """Why a ready replica still wants attention: its config differs from the leader's.

        Not a reason to be unready: a standby serves webhooks whatever its config, and a
        Kubernetes rolling update (`maxUnavailable: 0`) waits for the new pods, which differ
        from the leader until one of them leads, to be ready."""
        replica = self.replica
        if replica is not None and any(replica.config_differs(n) for n in replica.keepers):
            return CONFIG_DIFFERS
        return None

    async def status(self, merchant: str | None = None) -> dict[str, Any]:
        """The process and every merchant (`merchants`), or one merchant alone (KeyError for
        one not served here). A single-merchant daemon reports its merchant's sections at the
        top, as before."""
        report: dict[str, Any] = {"version": __version__}
        if merchant is not None or self.single:
            served = self.merchants[merchant] if merchant is not None else self._sole()
            reason = await self.readiness() if self.single else self._merchant_readiness(served)
            report.update({"ready": reason is None, "reason": reason, "merchant": served.name})
            report.update(await served.sections())
        else:
            reason = await self.readiness()
            report.update({"ready": reason is None, "reason": reason})
            report["merchants"] = await self._merchant_reports()
        if self.replica is not None:
            shown = (
                merchant if merchant is not None else (self._sole().name if self.single else None)
            )
            try:
                if shown is not None:
                    report["replica"] = await self.replica.status(shown)
                else:
                    report["replicas"] = self.replica.replicas_status()
            except Exception as exc:
                report["replica"] = {"error": f"cannot read the lease: {type(exc).__name__}"}
        # Errors quote channel answers; a channel that echoes our credentials must not leak them.
        scrubbed: dict[str, Any] = self._scrub(report)
        return scrubbed

    async def _merchant_reports(self) -> dict[str, Any]:
        reports: dict[str, Any] = {}
        for name in sorted({*self.merchants, *self.deployment.broken}):
            served = self.merchants.get(name)
            if served is None:
                faults = self.deployment.broken[name]
                reports[name] = {
                    "ready": False,
                    "role": "broken",
                    "reason": f"its file is not valid ({len(faults)} faults)",
                    "faults": [f"{k}: {p}" for k, p in faults],
                }
                continue
            reason = self._merchant_readiness(served)
            role = "serving"
            if self.replica is not None:
                role = "leading" if served.leading else "standby"
            reports[name] = {"ready": reason is None, "role": role, "reason": reason}
            reports[name].update(await served.sections())
        return reports

    # --- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped. Reloads replace pipelines; the shell stays throughout."""
        dsn = self.deployment.daemon.database
        if dsn is not None:
            await self._run_replicated(dsn)
            return
        try:
            for served in list(self.merchants.values()):
                await self._open(served)
        except BaseException:
            for served in list(self.merchants.values()):
                await served.close()
            raise
        try:
            await self._live()
        finally:
            self._notify("STOPPING=1")
            for served in list(self.merchants.values()):
                await served.close()
            log.info("daemon.stopped")

    async def _open(self, served: ServedMerchant) -> None:
        """Open a merchant's state; a single merchant's failure is the process's, one of
        several is that merchant's alone (it is reported, and retried at the next reload)."""
        try:
            await served.open(merchants=len(self.merchants))
        except _OPEN_FAILURES as exc:
            if self.single:
                raise
            served.trouble = f"cannot open its state: {exc}"
            log.error("merchant.state_unusable", merchant=served.name, error=str(exc))  # noqa: TRY400

    async def _open_and_serve(self, served: ServedMerchant) -> None:
        previous = self._tenancies.get(served.name)
        if previous is not None:  # removed by the last reload and still draining
            log.info("merchant.waiting_for_drain", merchant=served.name)
            await previous.wait()
        await self._open(served)
        await self._serve(served)

    async def _serve(self, served: ServedMerchant) -> None:
        """One merchant's pipelines until it stops; a failure of one of several merchants is
        logged with its traceback and ends that merchant only."""
        if served.trouble is not None or served.store is None:
            return
        ended = self._tenancies[served.name] = anyio.Event()
        try:
            await served.serve(self.deployment.daemon.listen, self.bound_port)
        except Exception as exc:
            if self.single:
                raise
            served.trouble = f"stopped by an unexpected error: {type(exc).__name__}"
            log.exception("merchant.failed", merchant=served.name)
        finally:
            ended.set()
            if self._tenancies.get(served.name) is ended:
                del self._tenancies[served.name]
            if served.removed and served.name not in self.merchants:  # not added back since
                self.metrics.forget_merchant(served.name)

    async def _run_replicated(self, dsn: str) -> None:
        """On PostgreSQL: one of several replicas, leading its share of the merchants (each
        while it holds that merchant's lease, `daemon.replicas`), a useful standby for the rest."""
        settings = self.deployment.daemon
        password = settings.database_password
        replica = await Replica.open(
            dsn,
            list(self.merchants),
            password=None if password is None else password.get_secret_value(),
            ttl=settings.lease_ttl,
            fingerprint={n: config_fingerprint(s.config) for n, s in self.merchants.items()},
            drain_timeout=settings.shutdown_timeout,
        )
        self.replica = replica
        replica.health.on_error = lambda op: self.metrics.store_errors.labels(operation=op).inc()
        for served in self.merchants.values():
            self._attach(served)
        try:
            await self._live(replica)
        finally:
            self._notify("STOPPING=1")
            with anyio.CancelScope(shield=True):
                await replica.close()
            log.info("daemon.stopped")

    def _attach(self, served: ServedMerchant) -> None:
        """A merchant's share of the replica: its fenced store, its keyCRM window counted in
        the database (whoever leads next inherits it), a standby until it leads."""
        replica = self.replica
        assert replica is not None
        served.store = replica.stores[served.name]
        served.budget.on_done = functools.partial(replica.record_request, served.name)
        served.view.leader.set(0)

    async def _live(self, replica: Replica | None = None) -> None:
        app = build_app(
            self,
            webhook_tokens=self._webhook_tokens,
            admin_token=lambda: self.deployment.daemon.admin_token,
        )
        listener = Listener(app)
        self._listener = listener
        async with anyio.create_task_group() as life:
            self._life = life
            if self._handle_signals:
                await life.start(self._signals)
            life.start_soon(lambda: watch_loop(self.metrics.event_loop_lag))
            if self._watchdog_every is not None:
                life.start_soon(self._watchdog, self._watchdog_every)
            if replica is not None:
                await life.start(replica.run)
            try:
                listen = self.deployment.daemon.listen
                try:
                    self.bound_port = await listener.start(listen)
                except OSError as exc:
                    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                    raise StartupError(f"cannot listen on {listen}: {reason}") from exc
                if replica is None:
                    await self._serve_all()
                else:
                    await self._follow(replica)
            finally:
                with anyio.CancelScope(shield=True):
                    await listener.close()
                self._listener = None
                self._life = None  # webhooks now find no task group to write in: 503
            life.cancel_scope.cancel()

    async def _serve_all(self) -> None:
        """Every merchant's pipelines side by side (and those a reload adds), until a stop."""
        async with anyio.create_task_group() as serving:
            self._serving = serving
            for served in self.merchants.values():
                serving.start_soon(self._serve, served)
            self._check_started()
            await self._terminate.wait()
            self._serving = None

    async def _follow(self, replica: Replica) -> None:
        """Lead each merchant while this replica holds its lease, stand by otherwise, until a
        stop; a merchant handed over (a replica joined) drains before its lease is released."""
        async with anyio.create_task_group() as roles:
            roles.start_soon(replica.lead, self._lead, self._drain)
            self._check_started()
            await self._terminate.wait()
            for served in list(self.merchants.values()):
                if served.leading:
                    await served.led.wait()  # the leaders' pipelines drain first
            roles.cancel_scope.cancel()

    def _drain(self, merchant: str) -> None:
        """The merchant is handed over to another replica: its pipeline drains, `_lead`
        returns, and the keeper releases the lease (cancelled if it overruns)."""
        served = self.merchants.get(merchant)
        if served is not None:
            served.end_pipeline()

    async def _lead(self, lease: Lease) -> None:
        replica = self.replica
        assert replica is not None
        served = self.merchants.get(lease.merchant)
        if served is None:  # removed by a reload meanwhile: the replica hands it over
            return
        name = served.name
        await served.lead(
            lease,
            replica.stores[name],
            inherit=functools.partial(replica.inherit_budget, name),
            consume=replica.consume_lookups,
            enqueue=functools.partial(replica.enqueue_uncapped, name),
            may_push=replica.keepers[name].leading,
            listen=self.deployment.daemon.listen,
            port=self.bound_port,
        )

    def _on_started(self, served: ServedMerchant, reloaded: bool) -> None:
        """A merchant's pipeline runs: once every merchant has started, the process has."""
        del served, reloaded
        self._check_started()

    def _check_started(self) -> None:
        waiting = [
            s for s in self.merchants.values() if s.trouble is None and not s.started.is_set()
        ]
        if self.replica is None and waiting:
            return
        if (
            self.replica is not None
            and self.single
            and not any(s.started.is_set() for s in self.merchants.values())
        ):
            return  # a single merchant's standby has started once it leads (as before)
        self._notify("READY=1")
        channels = sum(len(s.config.channels) for s in self.merchants.values())
        self._notify(f"STATUS=syncing {channels} channels")
        self.started.set()

    # --- process-level tasks ---------------------------------------------------------------------

    async def _watchdog(self, every: float) -> None:
        """Ping systemd from the event loop itself, so a wedged loop is restarted."""
        while True:
            message = "WATCHDOG=1"
            running = [s for s in self.merchants.values() if s.parts is not None]
            if running:
                pending = sum([await s.pending() for s in running])
                channels = sum(len(s.parts.dispatchers) for s in running if s.parts is not None)
                message += f"\nSTATUS={channels} channels, {pending} pending"
            self._notify(message)
            await anyio.sleep(every)

    async def _signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """For the whole life of the process: a signal during a reload or a drain waits its
        turn here instead of taking its default action (which would kill the process)."""
        wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
        with anyio.open_signal_receiver(*wanted) as received:
            task_status.started()
            async for signum in received:
                log.info("daemon.signal", signal=signal.Signals(signum).name)
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.stop()
                elif signum == signal.SIGUSR1:
                    self.resync("signal")
                elif signum == signal.SIGHUP and not self._stopping:
                    await self.reload()


def _deployment(config: Config | Deployment) -> Deployment:
    return config if isinstance(config, Deployment) else Deployment.single(config)


def _secrets(deployment: Deployment) -> list[str]:
    return [value for config in deployment.merchants.values() for value in secret_values(config)]
