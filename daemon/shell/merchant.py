"""One merchant as the shell serves it: its config across reloads, its state, its pipelines.

The shell (`daemon.shell.daemon`) holds one `ServedMerchant` per merchant and nothing of a
merchant's own: each has its own state (a SQLite file and its lock, or its share of PostgreSQL),
its own keyCRM budget, look-up queue and resync wish, and runs pipeline after pipeline (a reload
replaces one) while it is served. A merchant whose state cannot be opened, whose keyCRM refuses
its key or whose channel is down is only this object's trouble: `trouble` says why, the others
keep running.

    served = ServedMerchant(config, metrics, clock=...)
    await served.open()          # SQLite: lock and open the state, load what the last run left
    await served.serve()         # SQLite: pipelines until stop(); then close the state
    await served.lead(lease, ..) # PostgreSQL: pipelines while this replica holds the lease
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog

from daemon import __version__
from daemon.config.settings import Config
from daemon.core.errors import LookupQueueFull, StoreUnavailable
from daemon.core.telemetry import Metrics
from daemon.keycrm.budget import RequestBudget
from daemon.keycrm.feed import Enqueue
from daemon.keycrm.lookups import LookupQueue
from daemon.pipeline.assembly import Parts
from daemon.pipeline.merchant import Consume, MerchantPipeline, ResyncWish, Shared
from daemon.shell import upkeep
from daemon.shell.statelock import StateLock
from daemon.store import Store, open_store
from daemon.store.pg.lease import Lease

__all__ = ["LeaderConsume", "ServedMerchant"]

#: the replica's consumer of a merchant's durable look-up queue, under a lease
LeaderConsume = Callable[[Lease, Callable[[list[str]], Awaitable[None]]], Awaitable[None]]

log = structlog.get_logger("stocksync.pipeline")


class ServedMerchant:
    """A merchant this process serves (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        on_started: Callable[[ServedMerchant, bool], None] | None = None,
    ) -> None:
        """`on_started(self, reloaded)`: told each time a pipeline has started."""
        self.name = config.merchant
        self.config = config
        self.metrics = metrics
        #: this merchant's series (`merchant` filled in)
        self.view = metrics.for_merchant(self.name, [c.name for c in config.channels])
        #: removed by a reload: its series go once it has stopped
        self.removed = False
        self._clock = clock
        self._on_started = on_started or (lambda _served, _reloaded: None)
        self.budget = RequestBudget(config.keycrm.requests_per_minute)
        self.resyncs = ResyncWish(self.view)
        #: the running pipeline (between reloads, while leading)
        self.pipeline: MerchantPipeline | None = None
        self.store: Store | None = None
        #: webhook look-ups on a SQLite state (PostgreSQL: the replica's queue)
        self.lookups: LookupQueue | None = None
        #: why this merchant is not served at all (its state cannot be opened), or None
        self.trouble: str | None = None
        self.next_config: Config | None = None
        self.leading = False
        self.led = anyio.Event()
        self.started = anyio.Event()
        self._stop = anyio.Event()
        self._stopping = False
        self._lock: StateLock | None = None
        #: plan every stored record at the next pipeline start (the last process died)
        self._replan_all = False

    @property
    def parts(self) -> Parts | None:
        return None if self.pipeline is None else self.pipeline.parts

    # --- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop for good: the running pipeline drains and no other starts."""
        self._stopping = True
        self.end_pipeline()

    def end_pipeline(self) -> None:
        """The running pipeline drains (for a stop, for the next config, or a lost lease)."""
        self._stop.set()
        if self.pipeline is not None:
            self.pipeline.stop()

    def reload(self, config: Config) -> None:
        """A validated new config: the running pipeline drains and the next runs it."""
        self.next_config = config
        if self.pipeline is None:  # a standby (or one starting): nothing to drain
            return
        self.end_pipeline()

    def resync(self, trigger: str) -> None:
        """Full resync; merged with one under way, and kept for the next pipeline."""
        if self.pipeline is not None:
            self.pipeline.resync(trigger)
        else:
            self.resyncs.want(trigger)

    async def release_guard(self, channel: str | None, by: str) -> dict[str, int]:
        """The zeroes the guard holds go out. KeyError for a channel not configured;
        `StoreUnavailable` when no pipeline runs here or the state cannot write."""
        if channel is not None and channel not in {c.name for c in self.config.channels}:
            raise KeyError(channel)
        pipeline = self.pipeline
        if pipeline is None or pipeline.parts is None:
            raise StoreUnavailable(
                "no pipeline runs here (starting, or a standby replica)", operation="write"
            )
        return await pipeline.release_guard(channel, by)

    async def push_lookups(self, skus: list[str]) -> int:
        """A webhook's SKUs into this merchant's durable look-up queue (SQLite). Returns once
        committed; raises `LookupQueueFull` for SKUs over the cap (counted, logged)."""
        queue = self.lookups
        if queue is None:
            raise StoreUnavailable("the state store is not open yet", operation="write")
        overflow = await queue.push(skus)
        if overflow:
            self.view.lookups_dropped.labels(reason="overflow").inc(overflow)
            log.warning("keycrm.lookup_queue_full", merchant=self.name, dropped=overflow)
            raise LookupQueueFull(overflow, queue.cap)
        return 0

    # --- what the shell reports ------------------------------------------------------------------

    def readiness(self) -> str | None:
        """Why this merchant is not served as it should be, or None."""
        if self.trouble is not None:
            return self.trouble
        pipeline = self.pipeline
        if pipeline is None or pipeline.parts is None or self.store is None:
            return "starting"
        if self._stopping:
            return "stopping"
        if self.store.health.reason is not None:
            return self.store.health.reason
        return pipeline.readiness()

    async def sections(self) -> dict[str, Any]:
        """Its `source` and `channels` sections of `/status` (empty while none runs)."""
        pipeline = self.pipeline
        if pipeline is None or self.store is None:
            return {}
        return await pipeline.status()

    async def refresh_metrics(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.refresh_metrics()

    async def pending(self) -> int:
        pipeline = self.pipeline
        if pipeline is None or pipeline.parts is None:
            return 0
        return await pipeline.pending()

    # --- SQLite: this process owns the state -----------------------------------------------------

    async def open(self, merchants: int = 1) -> None:
        """Lock and open the state file, and load what the last process left (webhook SKUs
        still to look up, keyCRM's request window, whether it stopped cleanly). `merchants`:
        how many states the process opens (each one's page cache is a share of the whole)."""
        lock = StateLock(self.config.daemon.state)
        lock.__enter__()
        try:
            store = open_store(self.config.daemon.state, merchants=merchants)
            self.store = store
            store.health.on_error = lambda op: self.metrics.store_errors.labels(operation=op).inc()
            self.lookups = LookupQueue(store)
            with contextlib.suppress(StoreUnavailable):  # then the consumer asks the store
                await self.lookups.load()  # what a killed process left: looked up first
            await upkeep.load_budget(store, self.budget)
            self._replan_all = await upkeep.note_start(store)
        except BaseException:
            if self.store is not None:
                with anyio.CancelScope(shield=True):
                    await self.store.close()
                self.store = None
            lock.__exit__(None, None, None)
            raise
        self._lock = lock

    async def serve(self, listen: str, port: int | None) -> None:
        """Pipelines until `stop()`, then the state is closed (its lock released)."""
        store = self.store
        assert store is not None
        _log_as(self.name)
        try:
            async with anyio.create_task_group() as chores:
                chores.start_soon(upkeep.keep_budget, store, self.budget)
                await upkeep.recover_in_flight(store, self.config, self._clock())
                await self.pipelines(listen, port)
                chores.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(StoreUnavailable):
                await store.set_meta(upkeep.CLEAN_STOP, "1")  # reached only by a graceful stop
        finally:
            await self.close()

    async def close(self) -> None:
        """Save the budget and close the state (shielded: part of every exit)."""
        store, self.store = self.store, None
        with anyio.CancelScope(shield=True):
            if store is not None:
                await upkeep.save_budget(store, self.budget)
                await store.close()
            if self._lock is not None:
                self._lock.__exit__(None, None, None)
                self._lock = None

    # --- PostgreSQL: this replica leads the merchant while it holds the lease --------------------

    async def lead(
        self,
        lease: Lease,
        store: Store,
        *,
        inherit: Callable[[RequestBudget], Awaitable[int]],
        consume: LeaderConsume,
        enqueue: Enqueue,
        may_push: Callable[[], bool],
        listen: str,
        port: int | None,
    ) -> None:
        """This replica leads: take over the keyCRM window and the pushes a dead leader left
        in flight, then run the pipelines. Cancelled (by the keeper) the moment the lease ends
        on this process's own clock."""
        _log_as(self.name)
        self.store = store
        if not self._stopping:  # a drain (handed over) ended the last tenure: this one is new
            self._stop = anyio.Event()
        self.leading, self.led = True, anyio.Event()
        self.view.leader.set(1)
        log.info("replica.leading", merchant=self.name, epoch=lease.epoch)
        try:
            inherited = await inherit(self.budget)
            log.info("keycrm.budget_inherited", merchant=self.name, requests=inherited)
            # The predecessor may have died between storing records and planning them.
            self._replan_all = inherited > 0 or await upkeep.died_before(store)
            await upkeep.recover_in_flight(store, self.config, self._clock())
            await self.pipelines(
                listen,
                port,
                consume=functools.partial(consume, lease),
                may_push=may_push,
                enqueue=enqueue,
            )
        finally:
            self.leading = False
            self.pipeline = None
            self.view.leader.set(0)
            self.led.set()
            log.info("replica.standing_by", merchant=self.name, epoch=lease.epoch)

    # --- pipelines -------------------------------------------------------------------------------

    async def pipelines(
        self,
        listen: str,
        port: int | None,
        *,
        consume: Consume | None = None,
        may_push: Callable[[], bool] | None = None,
        enqueue: Enqueue | None = None,
    ) -> None:
        """Pipeline after pipeline (a reload replaces one), until a stop."""
        resync_first = False
        if self.next_config is not None:  # a reload taken before this one ran (a standby)
            self.switch(self.next_config)
        while not self._stopping:
            await self._run_pipeline(
                resync_first=resync_first,
                listen=listen,
                port=port,
                consume=consume,
                may_push=may_push,
                enqueue=enqueue,
            )
            if self.next_config is None or self._stopping:
                break
            self.switch(self.next_config)
            resync_first = True

    def switch(self, config: Config) -> None:
        """Take a validated new config for the next pipeline (what lasts across them stays)."""
        self.config, self.next_config = config, None
        self.budget.resize(config.keycrm.requests_per_minute)
        self.view = self.metrics.for_merchant(self.name, [c.name for c in config.channels])
        self._stop = anyio.Event()

    async def _run_pipeline(
        self,
        *,
        resync_first: bool,
        listen: str,
        port: int | None,
        consume: Consume | None,
        may_push: Callable[[], bool] | None,
        enqueue: Enqueue | None,
    ) -> None:
        """One pipeline for the current config, from its start to the end of its drain."""
        store = self.store
        assert store is not None
        config = self.config
        shared = Shared(store, self.view, self.budget, self.resyncs, self.lookups, self._clock)
        pipeline = MerchantPipeline(
            self.name,
            config,
            shared,
            drain_timeout=config.daemon.shutdown_timeout,
            replan_all=self._replan_all,
            # Before each push: do we still lead, on our own clock? A leader that was
            # paused past its lease wakes up pushing nothing.
            may_push=may_push,
            consume=consume,
            enqueue=enqueue,
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
                    merchant=self.name,
                    channels=[c.name for c in config.channels],
                    state=str(config.daemon.state),
                    listen=listen,
                    port=port,
                )
                self.started.set()
                self._on_started(self, resync_first)
                if resync_first:
                    self.resync("signal")
                async with anyio.create_task_group() as chores:
                    chores.start_soon(upkeep.prune_history, store, self._retention, self._clock)
                    await self._stop.wait()
                    chores.cancel_scope.cancel()
        finally:
            self._replan_all = pipeline.replan_all
            self.pipeline = None

    def _retention(self) -> float:
        return self.config.daemon.history_retention


def _log_as(merchant: str) -> None:
    """Every log line of this task and the tasks it starts names the merchant (the context
    is copied into each task anyio starts)."""
    structlog.contextvars.bind_contextvars(merchant=merchant)
