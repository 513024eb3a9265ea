"""Builds one pipeline's stages from one config: the composition of the engine.

    source (scan, catalog, look-ups) -> reconciler -> store (work queue) -> dispatcher -> channel
    order feed -> look-up queue (the webhook's) -> source's look-ups

What outlives a pipeline (the store, the keyCRM request budget, the look-up queue, the listener)
is handed in by the daemon shell; everything built here lives until the next reload.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from daemon.config.settings import Config
from daemon.core.channel import ChannelContext, readable
from daemon.core.telemetry import MerchantMetrics
from daemon.keycrm.budget import RequestBudget
from daemon.keycrm.client import KeycrmClient
from daemon.keycrm.feed import Enqueue, OrderFeed
from daemon.keycrm.lookups import LookupQueue
from daemon.keycrm.source import Source
from daemon.reconcile.reconciler import Reconciler
from daemon.rules.plan import TEMPLATE_FIELDS
from daemon.send.dispatch import Dispatcher
from daemon.send.verify import Reasserter, Verifier
from daemon.store import Store, Timing

__all__ = ["Parts", "assemble", "needs_catalog"]

_CATALOG_FIELDS = {f for f in TEMPLATE_FIELDS if f not in ("sku", "offer_id")}


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
    #: the order feed (None: `order_feed_interval = "0"`, or nowhere to queue its SKUs)
    feed: OrderFeed | None = None
    #: read-back (`Verifier`) or re-assertion (`Reasserter`) per channel that has one
    checkers: list[Verifier | Reasserter] = field(default_factory=list)


def assemble(
    config: Config,
    store: Store,
    session: aiohttp.ClientSession,
    metrics: MerchantMetrics,
    *,
    debounce: float | None = None,
    budget: RequestBudget | None = None,
    lookups: LookupQueue | None = None,
    enqueue: Enqueue | None = None,
    may_push: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.time,
) -> Parts:
    """Build every stage. `debounce` overrides the config's (`once` pushes without waiting);
    `budget` and `lookups` are the process's own (a fresh one each when not given); `enqueue`
    puts the order feed's SKUs into the durable look-up queue (no feed without it)."""
    sync = config.sync
    quiet = sync.debounce if debounce is None else debounce
    timing = Timing(quiet, max(quiet, sync.max_delay if debounce is None else quiet))
    dispatchers: dict[str, Dispatcher] = {}
    for channel in config.channels:
        adapter = channel.spec.build(
            channel.options, ChannelContext(channel.name, session, channel.timeout)
        )
        dispatchers[channel.name] = Dispatcher(
            channel,
            adapter,
            store,
            timing,
            metrics,
            batch_window=0.0 if debounce is not None else sync.batch_window,
            may_push=may_push,
            clock=clock,
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
    if budget is None:
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
        lookups=lookups,
        lookup_window=config.keycrm.lookup_window,
        clock=clock,
    )
    feed = None
    if enqueue is not None and config.keycrm.order_feed_interval > 0:
        feed = OrderFeed(
            client,
            store,
            enqueue,
            metrics,
            interval=config.keycrm.order_feed_interval,
            overlap=config.keycrm.order_feed_overlap,
            clock=clock,
        )
    metrics.order_feed_up.set(0 if feed is None else 1)
    return Parts(
        config,
        dispatchers,
        reconciler,
        source,
        client,
        feed,
        _checkers(config, dispatchers, store, metrics, clock),
    )


def _checkers(
    config: Config,
    dispatchers: dict[str, Dispatcher],
    store: Store,
    metrics: MerchantMetrics,
    clock: Callable[[], float],
) -> list[Verifier | Reasserter]:
    """Read-back where the channel can say what it holds and `verify_interval` is set;
    re-assertion where it cannot and the channel sets `reassert_interval`."""
    checkers: list[Verifier | Reasserter] = []
    every = config.sync.verify_interval
    for channel in config.channels:
        dispatcher = dispatchers[channel.name]
        reader = readable(dispatcher.adapter)
        if reader is not None and every is not None:
            checkers.append(
                Verifier(
                    dispatcher,
                    reader,
                    store,
                    metrics,
                    every=every,
                    share=config.sync.verify_share,
                    clock=clock,
                )
            )
        elif channel.reassert_interval is not None:
            checkers.append(
                Reasserter(dispatcher, store, every=channel.reassert_interval, clock=clock)
            )
    return checkers
