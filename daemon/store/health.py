"""Whether the store can write, as a state the daemon shows rather than a crash.

A full disk or an I/O error fails one store call (`StoreUnavailable`); callers back off and try
again, pushes are not acknowledged meanwhile (at least once keeps that safe), and readiness says
why. One error line is logged per episode, not per call, and one info line when writes work
again; every failed call is counted (`stocksync_store_errors_total{operation}`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

__all__ = ["StoreHealth"]

log = structlog.get_logger("stocksync.store")


@dataclass(slots=True)
class StoreHealth:
    """The store's own fault episode, if one is under way."""

    location: str
    failing_since: float | None = None
    last_error: str | None = None
    #: called with the operation (`read`, `write`) of every failed call: the metric's hook
    on_error: Callable[[str], None] = field(default=lambda _operation: None)
    clock: Callable[[], float] = time.time
    #: what the operator should look at, in the episode's log line
    hint: str = (
        "pushes are not acknowledged until the store can write again (free disk space?); "
        "nothing is lost, it recovers by itself"
    )

    #: when the last episode ended (a write worked again)
    recovered_at: float | None = None

    def failed(self, operation: str, error: str, *, began: float | None = None) -> None:
        """Count a failed call; start an episode unless one is under way, or the call `began`
        before the store last recovered (it waited through the end of the outage, on a
        database: a late echo of the episode that just ended, not a new one)."""
        self.on_error(operation)
        if began is not None and self.recovered_at is not None and began < self.recovered_at:
            return
        self.last_error = f"{operation}: {error}"
        if self.failing_since is None:
            self.failing_since = self.clock()
            log.error(
                "store.unavailable",
                state=self.location,
                operation=operation,
                error=error,
                hint=self.hint,
            )

    def wrote(self) -> None:
        if self.failing_since is not None:
            log.info(
                "store.recovered",
                state=self.location,
                down_seconds=round(self.clock() - self.failing_since, 1),
            )
            self.failing_since = None
            self.last_error = None
            self.recovered_at = self.clock()

    @property
    def reason(self) -> str | None:
        """Why the store is not usable now (for readiness), or None."""
        if self.failing_since is None:
            return None
        return f"the state store cannot write ({self.last_error})"
