"""One merchant's running pipeline: what the shell starts, stops and asks about.

A `MerchantPipeline` is built from one merchant's `[keycrm]`, `[sync]` and `[[channel]]`
tables (its `Parts`, `daemon.pipeline.assembly`) and the things the shell hands every pipeline
(`Shared`: the store, the metrics, the clock, the keyCRM budget, the look-up queue, the wish
to resync). It lives until the next reload, a stop, or the end of a lease; the shell builds a
new one for the next config. This is the whole interface the shell uses, so a shell that holds
several merchants holds several of these:

    run()                  build, load state, then serve until `stop()`, then drain
    stop()                 stop taking work; `run` drains and returns
    resync(trigger)        a full resync, merged with one under way
    release_guard(...)     the zeroes the guard holds go out
    readiness()            why this merchant's pipeline is not ready (keyCRM), or None
    status()               its `source` (the order feed's included) and `channels` sections
    refresh_metrics()      its gauges, before a scrape
    pending()              items waiting for a push (the watchdog's STATUS line)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import anyio.abc
import structlog

from daemon.config.settings import Config
from daemon.core.errors import SourceError, StoreUnavailable
from daemon.core.telemetry import MerchantMetrics
from daemon.keycrm.budget import RequestBudget
from daemon.keycrm.feed import Enqueue
from daemon.keycrm.lookups import LookupQueue
from daemon.pipeline.assembly import Parts, assemble
from daemon.pipeline.report import channel_sections, source_section, unacknowledged
from daemon.rules.plan import fingerprint
from daemon.send.dispatch import Dispatcher
from daemon.send.verify import Verifier
from daemon.store import Store

__all__ = ["Consume", "MerchantPipeline", "ResyncWish", "Shared"]

log = structlog.get_logger("stocksync.pipeline")

_STORE_RETRY = 5.0

Counts = dict[str, dict[str, int]]
Holds = dict[str, dict[str, Any] | None]

#: the leader's consumer of the durable look-up queue: handed each batch's look-up
Consume = Callable[[Callable[[list[str]], Awaitable[None]]], Awaitable[None]]


class ResyncWish:
    """A resync someone asked for, kept by the shell across pipelines: one asked for while no
    pipeline runs (a reload, a standby) is served by the next one."""

    def __init__(self, metrics: MerchantMetrics) -> None:
        self._metrics = metrics
        self.wanted = anyio.Event()
        self.trigger = "signal"

    def want(self, trigger: str) -> None:
        self._metrics.resyncs.labels(trigger=trigger).inc()
        self.trigger = trigger
        self.wanted.set()

    def served(self) -> None:
        self.wanted = anyio.Event()


@dataclass(slots=True)
class Shared:
    """What outlives a pipeline and the shell hands each one of its merchant's pipelines."""

    store: Store
    #: this merchant's metrics (`Metrics.for_merchant`: every series carries its `merchant`)
    metrics: MerchantMetrics
    budget: RequestBudget
    resyncs: ResyncWish
    #: webhook look-ups on a SQLite state (None on PostgreSQL: the replica's queue)
    lookups: LookupQueue | None = None
    clock: Callable[[], float] = time.time


class MerchantPipeline:
    """One merchant's stages and the loops that drive them (see the module docstring)."""

    def __init__(
        self,
        merchant: str,
        config: Config,
        shared: Shared,
        *,
        drain_timeout: float,
        replan_all: bool = False,
        may_push: Callable[[], bool] | None = None,
        consume: Consume | None = None,
        enqueue: Enqueue | None = None,
    ) -> None:
        """`replan_all`: plan every stored record again (the last process died); `may_push`:
        asked before each push (a leader paused past its lease pushes nothing); `consume`: the
        leader's consumer of the durable look-up queue (else the local queue's); `enqueue`: the
        order feed's way into that queue (else the local queue's `push`)."""
        self.merchant = merchant
        self.config = config
        self._shared = shared
        self._drain_timeout = drain_timeout
        #: still to do: cleared once the replan is done (the shell carries it to the next one)
        self.replan_all = replan_all
        self._may_push = may_push
        self._consume = consume
        if enqueue is None and shared.lookups is not None:
            enqueue = shared.lookups.push
        self._enqueue = enqueue
        self._stop = anyio.Event()
        #: the stages, once `run` has built them
        self.parts: Parts | None = None

    # --- the interface the shell calls -----------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Build the stages and load the source's state (then `task_status.started()`), serve
        until `stop()`, then let in-flight pushes finish within the drain timeout."""
        shared = self._shared
        async with aiohttp.ClientSession() as session:
            parts = assemble(
                self.config,
                shared.store,
                session,
                shared.metrics,
                budget=shared.budget,
                lookups=shared.lookups,
                enqueue=self._enqueue,
                may_push=self._may_push,
                clock=shared.clock,
            )
            self.parts = parts
            with contextlib.suppress(StoreUnavailable):  # readiness says why meanwhile
                await parts.source.load_state()
            task_status.started()
            try:
                await self._serve(parts)
            finally:
                self.parts = None
                # A replica that no longer leads polls no orders: no stale lag to page on.
                shared.metrics.order_feed_up.set(0)
                shared.metrics.order_feed_lag.set(0)

    def stop(self) -> None:
        """Stop taking work: `run` drains and returns (at once if called before it serves)."""
        self._stop.set()

    def resync(self, trigger: str) -> None:
        """A full resync; merged with one already under way."""
        self._shared.resyncs.want(trigger)

    async def release_guard(self, channel: str | None, by: str) -> dict[str, int]:
        """The zeroes the guard holds go out (one channel, or all), recorded in the history.
        Raises `StoreUnavailable` before the stages are built or when the state cannot write."""
        if self.parts is None:
            raise StoreUnavailable("the pipeline is starting", operation="write")
        return await self.parts.reconciler.holds.release(channel, by)

    def readiness(self) -> str | None:
        """Why this merchant is not ready, or None. A first scan still running does not make
        it unready: at 100k SKUs it takes half an hour, and webhooks must flow meanwhile."""
        parts = self.parts
        if parts is None:
            return "starting"
        reached = parts.client.last_success
        if reached is None:
            return "keyCRM has not answered since start"
        limit = 3 * self.config.keycrm.poll_interval + self.config.keycrm.timeout
        now = self._shared.clock()
        if now - reached > limit:
            return f"keyCRM has not answered for {now - reached:.0f}s"
        return None

    async def status(self) -> dict[str, Any]:
        """This merchant's `source` and `channels` sections of `/status`."""
        parts = self.parts
        if parts is None:
            return {}
        try:
            counts, oldest, holds = await self._queues(parts)
        except StoreUnavailable:
            counts, oldest, holds = {}, {}, {}
        now = self._shared.clock()
        return {
            "source": source_section(parts, now),
            "channels": channel_sections(parts, counts, oldest, holds, now),
        }

    async def refresh_metrics(self) -> None:
        """This merchant's gauges; the last values stand while the store cannot be read."""
        parts, metrics = self.parts, self._shared.metrics
        if parts is None:
            return
        try:
            counts, oldest, holds = await self._queues(parts)
        except StoreUnavailable:
            return  # stocksync_store_errors_total says why
        now = self._shared.clock()
        for name in parts.dispatchers:
            per_status = counts.get(name, {})
            metrics.pending.labels(channel=name).set(unacknowledged(per_status))
            metrics.rejected.labels(channel=name).set(per_status.get("rejected", 0))
            # Only a hold's zeroes: those a running scan holds until its verdict page nobody.
            hold = holds.get(name)
            metrics.guard_held.labels(channel=name).set(0 if hold is None else hold["held"])
            since = oldest.get(name)
            metrics.sync_lag.labels(channel=name).set(0 if since is None else max(0.0, now - since))
        for checker in parts.checkers:
            if isinstance(checker, Verifier):
                checker.publish_expected(counts.get(checker.name, {}).get("ok", 0))
        metrics.keycrm_budget_used.set(parts.client.budget.sent_in_window())
        if parts.feed is not None:
            metrics.order_feed_lag.set(parts.feed.lag(now))
        metrics.first_scan_done.set(1 if parts.source.progress.first_scan_done else 0)

    async def pending(self) -> int:
        """Items waiting for a push or in flight (0 while the store cannot be read)."""
        try:
            counts = await self._shared.store.counts()
        except StoreUnavailable:
            return 0
        return sum(unacknowledged(c) for c in counts.values())

    async def _queues(self, parts: Parts) -> tuple[Counts, dict[str, float], Holds]:
        """Items per channel per status, each channel's oldest unacknowledged change, and its
        guard hold: what `/status` and the gauges show (raises `StoreUnavailable`)."""
        store = self._shared.store
        counts = await store.counts()
        oldest = await store.oldest_pending()
        return counts, oldest, await parts.reconciler.holds.report(counts)

    # --- the loops -------------------------------------------------------------------------------

    async def _serve(self, parts: Parts) -> None:
        sync = self.config.sync
        async with anyio.create_task_group() as workers:
            for dispatcher in parts.dispatchers.values():
                workers.start_soon(dispatcher.run)
            async with anyio.create_task_group() as feeders:
                for dispatcher in parts.dispatchers.values():
                    feeders.start_soon(dispatcher.report)
                # The rules may have changed since the stored desired values were planned.
                feeders.start_soon(self._replan, parts)
                feeders.start_soon(parts.source.run_scans)
                feeders.start_soon(parts.source.run_catalog)
                if parts.feed is not None:  # the leader's alone: a standby runs no pipeline
                    feeders.start_soon(parts.feed.run)
                if self._consume is None:
                    feeders.start_soon(parts.source.run_lookups)
                else:  # webhooks any replica took, from the durable queue
                    feeders.start_soon(self._consume_lookups, self._consume, parts)
                feeders.start_soon(self._resyncs, parts)
                for checker in parts.checkers:
                    feeders.start_soon(checker.run)
                if sync.resync_interval is not None:
                    feeders.start_soon(self._scheduled_resyncs, sync.resync_interval)
                await self._stop.wait()
                feeders.cancel_scope.cancel()
            deadline = self._shared.clock() + self._drain_timeout
            log.info("daemon.draining", timeout=self._drain_timeout)
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as drains:
                    for dispatcher in parts.dispatchers.values():
                        drains.start_soon(_drain, dispatcher, deadline)
            workers.cancel_scope.cancel()

    @staticmethod
    async def _consume_lookups(consume: Consume, parts: Parts) -> None:
        """The leader serves the durable look-up queue; a failed look-up leaves its SKUs
        queued (claimable again) and is tried again after a pause."""
        while True:
            try:
                await consume(parts.source.look_up)
            except SourceError as exc:
                log.warning("keycrm.lookup_failed", error=str(exc))
                await anyio.sleep(_STORE_RETRY)
            except StoreUnavailable:
                await anyio.sleep(_STORE_RETRY)  # logged once per outage (`store.unavailable`)

    async def _replan(self, parts: Parts) -> None:
        """Plan every stored record again if the rules changed since they were last planned
        (a new key template, a store code): in the background, in pages, retrying while the
        store fails. Unchanged rules cost nothing at start."""
        store = self._shared.store
        rules = fingerprint({c.name: c.rules for c in self.config.channels})
        while True:
            try:
                unchanged = await store.get_meta("plan_fingerprint") == rules
                if unchanged and not self.replan_all:
                    return
                reason = "the planning rules changed" if not unchanged else "an unclean stop"
                log.info("plan.replanning", reason=reason)
                replanned = await parts.reconciler.replan()
                await store.set_meta("plan_fingerprint", rules)
                self.replan_all = False
            except StoreUnavailable:
                await anyio.sleep(_STORE_RETRY)
                continue
            log.info("plan.replanned", items=replanned)
            return

    async def _resyncs(self, parts: Parts) -> None:
        wish, store = self._shared.resyncs, self._shared.store
        while True:
            await wish.wanted.wait()
            if parts.source.progress.resync and parts.source.progress.running:
                wish.served()
                log.info("resync.merged", trigger=wish.trigger)
                continue
            try:
                replanned = await self._replan_if_stale(parts)
                forced = await store.force_all(self._shared.clock())
            except StoreUnavailable:
                await anyio.sleep(_STORE_RETRY)  # still wanted: tried again
                continue
            wish.served()
            for dispatcher in parts.dispatchers.values():
                dispatcher.notify()
            parts.source.request_scan()
            log.info("resync.started", trigger=wish.trigger, items=forced, replanned=replanned)

    async def _replan_if_stale(self, parts: Parts) -> int | None:
        """A resync's plan: the stored desired values were planned from the stored records by
        these very rules unless the rules' fingerprint moved or the last process died mid-way;
        then every record is planned again (returns how many items that moved), else the stored
        values stand and are pushed again as they are (None). Re-planning a million unchanged
        records cost an eighth of a resync's CPU for nothing (issue 21); the resync's own scan
        still brings every record keyCRM changed."""
        store = self._shared.store
        rules = fingerprint({c.name: c.rules for c in self.config.channels})
        if not self.replan_all and await store.get_meta("plan_fingerprint") == rules:
            return None
        replanned = await parts.reconciler.replan()
        await store.set_meta("plan_fingerprint", rules)
        return replanned

    async def _scheduled_resyncs(self, every: float) -> None:
        """`sync.resync_interval`: heal drift made by hand in a channel, on a schedule."""
        while True:
            await anyio.sleep(every)
            self.resync("schedule")


async def _drain(dispatcher: Dispatcher, deadline: float) -> None:
    try:
        await dispatcher.drain(deadline)
    except StoreUnavailable:
        return  # what was not settled is pushed again after the restart
