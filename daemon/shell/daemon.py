"""The daemon shell: what lives as long as the process, and the pipelines that come and go in it.

    source (scan, catalog, look-ups) -> reconciler -> store (work queue) -> dispatcher -> channel

The shell owns the store (and the lock on it, or the replica and its lease), the HTTP listener,
signal handling, the keyCRM request budget (with any 429 pause), the look-up queue and what it
keeps in the store across processes (`upkeep`). It holds one `MerchantPipeline` (merchant
"default"), built from one config, and talks to it only through that class's interface
(`daemon.pipeline.merchant`): run, stop, resync, release_guard, readiness, status,
refresh_metrics, pending. A SIGHUP validates the new file whole, binds a changed listener first,
and only then drains the running pipeline and starts the new one; a fault at any step keeps the
old one running. Signals are handled the whole time: one that arrives during a reload or a drain
waits its turn, and a SIGTERM still stops within `shutdown_timeout`. SIGTERM/SIGINT stop taking
work, send what is debounced now, let in-flight requests finish within `shutdown_timeout`, and
return.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from prometheus_client import CollectorRegistry

from daemon import __version__
from daemon.config.fingerprint import config_fingerprint
from daemon.config.settings import Config, secret_values
from daemon.core import redact
from daemon.core.errors import (
    ConfigError,
    LookupQueueFull,
    StartupError,
    StoreUnavailable,
)
from daemon.core.telemetry import Metrics
from daemon.keycrm.budget import RequestBudget
from daemon.keycrm.lookups import LookupQueue
from daemon.pipeline.assembly import Parts, assemble
from daemon.pipeline.merchant import MerchantPipeline, ResyncWish, Shared
from daemon.replicas.replica import Replica
from daemon.shell import upkeep
from daemon.shell.deadline import commit_within
from daemon.shell.http import build_app
from daemon.shell.listener import Listener
from daemon.shell.logs import scrubber
from daemon.shell.looplag import watch_loop
from daemon.shell.statelock import StateLock
from daemon.store import Store, open_store
from daemon.store.pg.lease import Lease

__all__ = ["Daemon", "Parts", "assemble"]

log = structlog.get_logger("stocksync.pipeline")

#: the one merchant a deployment serves today (the lease and queues are keyed by it)
MERCHANT = "default"
#: what `/readyz` adds on a replica whose config is not the leader's
CONFIG_DIFFERS = "config differs from leader's"
#: how long a webhook waits for its SKUs to be committed before it is answered 503: the
#: answer, 202 or 503, leaves within 5 s whatever the store does (`daemon.shell.deadline`)
WEBHOOK_STORE_WAIT = 4.5


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
        #: the merchant's pipeline while one runs (between reloads, while leading)
        self.pipeline: MerchantPipeline | None = None
        self.store: Store | None = None
        self._stop = anyio.Event()
        self._stopping = False
        self._next_config: Config | None = None
        self._resyncs = ResyncWish(self.metrics)
        self.started = anyio.Event()
        self.bound_port: int | None = None
        self.budget = RequestBudget(config.keycrm.requests_per_minute)
        #: webhook look-ups on a SQLite state (PostgreSQL: the replica's queue); set by `run`
        self.lookups: LookupQueue | None = None
        #: the process's lifetime task group, while `run` runs (webhook writes run in it)
        self._life: anyio.abc.TaskGroup | None = None
        self._listener: Listener | None = None
        #: set on PostgreSQL: this process is one replica of several
        self.replica: Replica | None = None
        self._leading = False
        self._led = anyio.Event()
        self._terminate = anyio.Event()
        #: plan every stored record at the next pipeline start (the last process died)
        self._replan_all = False

    # --- control ---------------------------------------------------------------------------------

    @property
    def parts(self) -> Parts | None:
        """The running pipeline's stages (None while none runs)."""
        return None if self.pipeline is None else self.pipeline.parts

    def stop(self) -> None:
        """Graceful stop (SIGTERM, SIGINT)."""
        self._stopping = True
        self._end_pipeline()
        self._terminate.set()

    def _end_pipeline(self) -> None:
        """The running pipeline drains (for a stop, or for the next config)."""
        self._stop.set()
        if self.pipeline is not None:
            self.pipeline.stop()

    def resync(self, trigger: str) -> None:
        """Full resync (SIGUSR1, `POST /admin/resync`); merged with one already under way, and
        kept for the next pipeline when none runs."""
        if self.pipeline is not None:
            self.pipeline.resync(trigger)
        else:
            self._resyncs.want(trigger)

    async def release_guard(self, channel: str | None, by: str) -> dict[str, int]:
        """`POST /admin/guard/release`: the zeroes the guard holds go out (one channel, or all),
        recorded in the history. Raises KeyError for a channel not configured, and
        `StoreUnavailable` when this process runs no pipeline (starting, or a standby replica:
        ask the leader) or the state cannot write."""
        pipeline = self.pipeline
        if channel is not None and channel not in {c.name for c in self.config.channels}:
            raise KeyError(channel)
        if pipeline is None or pipeline.parts is None:
            raise StoreUnavailable(
                "no pipeline runs here (starting, or a standby replica)", operation="write"
            )
        return await pipeline.release_guard(channel, by)

    async def webhook(self, skus: list[str]) -> None:
        """A webhook's SKUs into the durable look-up queue: on PostgreSQL the one the leader
        consumes (any replica takes them), else the state file's. Returns once they are
        committed, so a crash after the 2xx loses none; raises `StoreUnavailable` when they
        cannot be (the webhook is refused, and keyCRM may send it again)."""
        replica, queue = self.replica, self.lookups
        if replica is not None:
            await commit_within(
                self._life, WEBHOOK_STORE_WAIT, lambda: replica.enqueue(MERCHANT, skus)
            )
            return
        if queue is None:
            raise StoreUnavailable("the state store is not open yet", operation="write")
        overflow = await commit_within(self._life, WEBHOOK_STORE_WAIT, lambda: queue.push(skus))
        if overflow:
            self.metrics.lookups_dropped.labels(reason="overflow").inc(overflow)
            log.warning("keycrm.lookup_queue_full", dropped=overflow, cap=queue.cap)
            raise LookupQueueFull(overflow, queue.cap)

    async def reload(self) -> None:
        """SIGHUP: re-read and validate the file, bind a changed listener; on any fault keep
        running the old config and say why."""
        if self._reload is None:
            return
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            config = self._reload()
            if self._listener is not None:
                try:
                    self.bound_port = await self._listener.rebind(config.daemon.listen)
                except OSError as exc:
                    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                    raise ConfigError(
                        [("daemon.listen", f"cannot listen there: {reason}")]
                    ) from exc
        except ConfigError as exc:
            self.metrics.config_reloads.labels(result="error").inc()
            log.error(  # noqa: TRY400 (a fault of the file, not of the program: no traceback)
                "config.reload_failed",
                faults=[f"{k}: {p}" for k, p in exc.faults],
                hint="still running the previous configuration",
            )
            self._notify("READY=1")
            return
        redact.update(secret_values(config))  # a rotated secret is masked from now on
        self.metrics.config_reloads.labels(result="ok").inc()
        log.info("config.reloaded", channels=[c.name for c in config.channels])
        if self.replica is not None and not self._leading:
            self._switch(config)  # a standby has no pipeline to replace
            return
        self._next_config = config
        self._end_pipeline()

    # --- HTTP controller -------------------------------------------------------------------------

    async def refresh_metrics(self) -> None:
        if self.replica is not None:
            differs = self.replica.config_differs(MERCHANT)
            self.metrics.config_mismatch.labels(merchant=MERCHANT).set(1 if differs else 0)
        if self.pipeline is not None:
            await self.pipeline.refresh_metrics()

    async def readiness(self) -> str | None:
        pipeline = self.pipeline
        if self.replica is not None and not self._leading and self.store is not None:
            # A healthy standby is ready: the Service keeps sending it webhooks to queue. One
            # that cannot reach the database is not: it could queue none of them.
            if self._stopping:
                return "stopping"
            return self.store.health.reason
        if pipeline is None or pipeline.parts is None or self.store is None:
            return "starting"
        if self._stopping:
            return "stopping"
        if self.store.health.reason is not None:
            return self.store.health.reason
        return pipeline.readiness()

    def readiness_note(self) -> str | None:
        """Why a ready replica still wants attention: its config differs from the leader's.

        Not a reason to be unready: a standby serves webhooks whatever its config, and a
        Kubernetes rolling update (`maxUnavailable: 0`) waits for the new pods, which differ
        from the leader until one of them leads, to be ready."""
        if self.replica is not None and self.replica.config_differs(MERCHANT):
            return CONFIG_DIFFERS
        return None

    async def status(self) -> dict[str, Any]:
        pipeline = self.pipeline
        sections = {} if pipeline is None or self.store is None else await pipeline.status()
        reason = await self.readiness()
        report: dict[str, Any] = {"version": __version__, "ready": reason is None, "reason": reason}
        report.update(sections)
        if self.replica is not None:
            try:
                report["replica"] = await self.replica.status(MERCHANT)
            except Exception as exc:
                report["replica"] = {"error": f"cannot read the lease: {type(exc).__name__}"}
        # Errors quote channel answers; a channel that echoes our credentials must not leak them.
        scrubbed: dict[str, Any] = self._scrub(report)
        return scrubbed

    # --- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped. Reloads replace the pipeline; the shell stays throughout."""
        if self.config.daemon.database is not None:
            await self._run_replicated(self.config.daemon.database)
            return
        state = self.config.daemon.state
        with StateLock(state):
            store = open_store(state)
            self.store = store
            store.health.on_error = lambda op: self.metrics.store_errors.labels(operation=op).inc()
            self.lookups = LookupQueue(store)
            try:
                with contextlib.suppress(StoreUnavailable):  # then the consumer asks the store
                    await self.lookups.load()  # what a killed process left: looked up first
                await upkeep.load_budget(store, self.budget)
                self._replan_all = await upkeep.note_start(store)
                await self._live(store)
                with anyio.CancelScope(shield=True), contextlib.suppress(StoreUnavailable):
                    await store.set_meta(upkeep.CLEAN_STOP, "1")  # reached only by a graceful stop
            finally:
                self._notify("STOPPING=1")
                with anyio.CancelScope(shield=True):
                    await upkeep.save_budget(store, self.budget)
                    await store.close()
                log.info("daemon.stopped")

    async def _run_replicated(self, dsn: str) -> None:
        """On PostgreSQL: one of several replicas, leading the merchant while it holds the
        lease (`daemon.pg`), a useful standby otherwise."""
        settings = self.config.daemon
        password = settings.database_password
        replica = await Replica.open(
            dsn,
            MERCHANT,
            password=None if password is None else password.get_secret_value(),
            ttl=settings.lease_ttl,
            fingerprint=config_fingerprint(self.config),
        )
        self.replica = replica
        self.store = replica.store
        replica.store.health.on_error = lambda op: self.metrics.store_errors.labels(
            operation=op
        ).inc()
        self.metrics.leader.labels(merchant=MERCHANT).set(0)
        self.budget.on_done = functools.partial(replica.record_request, MERCHANT)
        try:
            await self._live(replica.store, replica=replica)
        finally:
            self._notify("STOPPING=1")
            with anyio.CancelScope(shield=True):
                await replica.close()
            log.info("daemon.stopped")

    async def _live(self, store: Store, *, replica: Replica | None = None) -> None:
        app = build_app(
            self,
            webhook_token=lambda: self.config.keycrm.webhook_token,
            admin_token=lambda: self.config.daemon.admin_token,
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
            if replica is None:
                life.start_soon(upkeep.keep_budget, store, self.budget)
            else:
                await life.start(replica.run)
            try:
                try:
                    self.bound_port = await listener.start(self.config.daemon.listen)
                except OSError as exc:
                    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                    listen = self.config.daemon.listen
                    raise StartupError(f"cannot listen on {listen}: {reason}") from exc
                if replica is None:
                    await upkeep.recover_in_flight(store, self.config, self._clock())
                    await self._pipelines()
                else:
                    await self._follow(replica)
            finally:
                with anyio.CancelScope(shield=True):
                    await listener.close()
                self._listener = None
                self._life = None  # webhooks now find no task group to write in: 503
            life.cancel_scope.cancel()

    async def _pipelines(self, lease: Lease | None = None) -> None:
        """Pipeline after pipeline (a reload replaces one), until a stop."""
        resync_first = False
        if self._next_config is not None:  # a reload a standby took before it led
            self._switch(self._next_config)
        while not self._stopping:
            await self._run_pipeline(self.config, resync_first=resync_first, lease=lease)
            if self._next_config is None or self._stopping:
                break
            self._switch(self._next_config)
            resync_first = True

    async def _follow(self, replica: Replica) -> None:
        """Lead whenever this replica holds the lease, stand by otherwise, until a stop."""
        async with anyio.create_task_group() as roles:
            roles.start_soon(functools.partial(replica.keeper.lead, self._lead, drain=self._drain))
            await self._terminate.wait()
            if self._leading:
                await self._led.wait()  # the leader's pipeline drains first
            roles.cancel_scope.cancel()

    def _drain(self) -> None:
        """The merchant is handed over to another replica: the pipeline drains, `_lead`
        returns, and the keeper releases the lease (cancelled if it overruns)."""
        if self.pipeline is not None:
            self.pipeline.stop()

    async def _lead(self, lease: Lease) -> None:
        """This replica leads: take over the keyCRM window and the pushes a dead leader left
        in flight, then run the pipelines. Cancelled (by the keeper) the moment the lease ends
        on this process's own clock."""
        assert self.replica is not None
        assert self.store is not None
        self._leading, self._led = True, anyio.Event()
        self.metrics.leader.labels(merchant=MERCHANT).set(1)
        log.info("replica.leading", merchant=MERCHANT, epoch=lease.epoch)
        try:
            inherited = await self.replica.inherit_budget(MERCHANT, self.budget)
            log.info("keycrm.budget_inherited", requests=inherited)
            # The predecessor may have died between storing records and planning them.
            self._replan_all = inherited > 0 or await upkeep.died_before(self.store)
            await upkeep.recover_in_flight(self.store, self.config, self._clock())
            await self._pipelines(lease)
        finally:
            self._leading = False
            self.pipeline = None
            self.metrics.leader.labels(merchant=MERCHANT).set(0)
            self._led.set()
            log.info("replica.standing_by", merchant=MERCHANT, epoch=lease.epoch)

    def _switch(self, config: Config) -> None:
        """Take a validated new config for the next pipeline (the shell's parts stay)."""
        self.config, self._next_config = config, None
        if self.replica is not None:  # published with the next lease step
            self.replica.keeper.fingerprint = config_fingerprint(config)
        self._scrub = scrubber(secret_values(config))
        self.budget.resize(config.keycrm.requests_per_minute)
        for channel in config.channels:
            self.metrics.add_channel(channel.name)
        self._stop = anyio.Event()

    async def _run_pipeline(
        self, config: Config, *, resync_first: bool, lease: Lease | None = None
    ) -> None:
        """One merchant pipeline for `config`, from its start to the end of its drain."""
        assert self.store is not None
        replica = self.replica
        consume = None
        if replica is not None and lease is not None:
            consume = functools.partial(replica.consume_lookups, lease)
        pipeline = MerchantPipeline(
            MERCHANT,
            config,
            Shared(self.store, self.metrics, self.budget, self._resyncs, self.lookups, self._clock),
            drain_timeout=config.daemon.shutdown_timeout,
            replan_all=self._replan_all,
            # Before each push: do we still lead, on our own clock? A leader that was
            # paused past its lease wakes up pushing nothing.
            may_push=None if replica is None else replica.keeper.leading,
            consume=consume,
        )
        self.pipeline = pipeline
        if self._stop.is_set():  # a stop or a reload while this one was being set up
            pipeline.stop()
        try:
            async with anyio.create_task_group() as running:
                await running.start(pipeline.run)
                log.info(
                    "config.applied" if resync_first else "daemon.started",
                    version=__version__,
                    channels=[c.name for c in config.channels],
                    state=str(config.daemon.state),
                    listen=config.daemon.listen,
                    port=self.bound_port,
                )
                self._notify("READY=1")
                self._notify(f"STATUS=syncing {len(config.channels)} channels")
                self.started.set()
                if resync_first:
                    self.resync("signal")
                async with anyio.create_task_group() as chores:
                    chores.start_soon(
                        upkeep.prune_history, self.store, self._retention, self._clock
                    )
                    await self._stop.wait()
                    chores.cancel_scope.cancel()
        finally:
            self._replan_all = pipeline.replan_all
            self.pipeline = None

    def _retention(self) -> float:
        return self.config.daemon.history_retention

    # --- process-level tasks ---------------------------------------------------------------------

    async def _watchdog(self, every: float) -> None:
        """Ping systemd from the event loop itself, so a wedged loop is restarted."""
        while True:
            message = "WATCHDOG=1"
            pipeline = self.pipeline
            if pipeline is not None and pipeline.parts is not None:
                pending = await pipeline.pending()
                channels = len(pipeline.parts.dispatchers)
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
