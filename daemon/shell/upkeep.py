"""What the shell keeps in the store across processes: a clean stop, the keyCRM budget's
window, pushes a dead process left in flight, and the history's retention.

Each step tolerates a store that cannot be reached (`StoreUnavailable`): the store logs the
outage once, and the step is skipped or done again at the next start.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import orjson
import structlog

from daemon.config.settings import Config
from daemon.core.errors import StoreUnavailable
from daemon.keycrm.budget import RequestBudget
from daemon.store import Store

__all__ = [
    "CLEAN_STOP",
    "died_before",
    "keep_budget",
    "load_budget",
    "note_start",
    "prune_history",
    "recover_in_flight",
    "save_budget",
]

log = structlog.get_logger("stocksync.pipeline")

#: the meta key that says whether the last process stopped gracefully ("1") or died ("0")
CLEAN_STOP = "clean_stop"
_HOUSEKEEPING_EVERY = 60.0
_BUDGET_SAVE_EVERY = 2.0


async def died_before(store: Store) -> bool:
    """Whether the process before this one died (it started and never stopped gracefully)."""
    return await store.get_meta(CLEAN_STOP) == "0"


async def note_start(store: Store) -> bool:
    """Note that this process runs; returns whether the last one died. If it did, records it
    had stored may not have been planned yet (a kill between the two transactions): everything
    is planned again at this start, whatever the rules' fingerprint says."""
    try:
        died = await died_before(store)
        await store.set_meta(CLEAN_STOP, "0")
    except StoreUnavailable:
        return True
    return died


async def recover_in_flight(store: Store, config: Config, now: float) -> None:
    """Pushes cut off by the death of the last process: their outcome is unknown."""
    try:
        # A dead process's request may still be on its way: wait out each channel's
        # timeout before correcting it, so it cannot land after the correction.
        grace = {c.name: c.timeout for c in config.channels}
        recovered = await store.recover(now, grace)
    except StoreUnavailable:
        return  # logged by the store; the items stay `sending` until a start that can write
    if recovered:
        log.warning("daemon.recovered_in_flight", items=recovered)


async def prune_history(
    store: Store, retention: Callable[[], float], clock: Callable[[], float]
) -> None:
    """History older than `retention()` (read each time: a reload may change it) goes."""
    while True:
        try:
            pruned = await store.prune_history(clock() - retention())
        except StoreUnavailable:
            pruned = 0
        if pruned:
            log.info("history.pruned", rows=pruned)
        await anyio.sleep(_HOUSEKEEPING_EVERY)


async def load_budget(store: Store, budget: RequestBudget) -> None:
    """What the last process spent in keyCRM's window counts against this one's."""
    try:
        saved = await store.get_meta("keycrm_budget")
    except StoreUnavailable:
        return
    if saved:
        budget.restore(orjson.loads(saved), time.time())


async def save_budget(store: Store, budget: RequestBudget, unless: str | None = None) -> str:
    """Write the budget's snapshot unless it is `unless` (what was saved last); returns it."""
    snapshot = orjson.dumps(budget.snapshot(time.time())).decode()
    if snapshot == unless:
        return snapshot
    try:
        await store.set_meta("keycrm_budget", snapshot)
    except StoreUnavailable:
        return unless or ""
    return snapshot


async def keep_budget(
    store: Store, budget: RequestBudget, every: float = _BUDGET_SAVE_EVERY
) -> None:
    """Save the budget's recent requests every few seconds (and at exit): a restart, even
    a SIGKILL, then knows what the last process spent in keyCRM's window. An idle merchant's
    snapshot stays the same and is not written again (hundreds of merchants in one process
    would otherwise commit a write each every few seconds for nothing)."""
    saved: str | None = None
    while True:
        await anyio.sleep(every)
        saved = await save_budget(store, budget, saved)
