"""Keeps this replica's bid for a merchant's lease: acquire or renew every third of the TTL.

The pipeline asks `keeper.lease()` before each leader action (a scan page, a look-up, a push)
and gets the lease only while it is valid on this process's monotonic clock; `wait_changed`
wakes whoever starts and stops the leader's work. A database error does not end leadership at
once: the lease stays valid until its local deadline, which two failed renewals in a row leave
time for, and a third makes the replica a standby. Every connection goes through
`daemon.store.pg.faults`: a database error is `StoreUnavailable` here as everywhere, and work that
fails with it is started again while the lease holds, never the end of the process.

Given its config's fingerprint, each step also publishes it (`daemon.replicas.configs`): a replica
whose config is older than a live replica's does not bid, and a leader in that position hands
its lease over, so replicas of different configs converge on the newest instead of on whoever
bid first. Without a fingerprint a keeper bids exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import structlog
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from daemon.core.errors import StoreUnavailable
from daemon.replicas import configs
from daemon.store import StoreHealth
from daemon.store.pg import lease as leases
from daemon.store.pg.connect import Pool
from daemon.store.pg.faults import Database
from daemon.store.pg.lease import Lease, LeaseLost

__all__ = ["LeaseKeeper"]

log = structlog.get_logger("stocksync.leader")


class LeaseKeeper:
    """One replica's lease for one merchant: `run` keeps it, `lease()` says whether we lead."""

    def __init__(
        self,
        pool: Pool,
        merchant: str,
        holder: str,
        ttl: float,
        *,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        fingerprint: str | None = None,
        db: Database | None = None,
    ) -> None:
        self.pool = pool
        #: connections whose errors are `StoreUnavailable`, in the replica's shared health
        self._db = db or Database(pool, StoreHealth("postgresql"))
        self._failing = False  # the last step failed: `lease.renew_failed` once per episode
        self.merchant = merchant
        self.holder = holder
        self.ttl = ttl
        self.margin = leases.default_margin(ttl) if margin is None else margin
        self._clock = clock
        self._lease: Lease | None = None
        self._seen: int | None = None  # the epoch we last told waiters about (None: standby)
        self._released = False
        self._poke = anyio.Event()
        self._changed = anyio.Event()
        #: who leads, as last read from the database while we did not (for `/status`)
        self.leader: leases.LeaseInfo | None = None
        #: this replica's config fingerprint, published with every step (set again on reload)
        self.fingerprint = fingerprint
        #: how our config compares with the leader's and the newest live one, as last published
        self.config: configs.ConfigView | None = None
        self._withheld = False  # said once per episode that we do not bid (an older config)

    def poke(self) -> None:
        """Bid now rather than at the next renewal time (the leader just released its lease)."""
        self._poke.set()

    def lease(self) -> Lease | None:
        """The lease while it is valid on our own clock, else None: check before every push."""
        current = self._lease
        if current is None or not current.valid(self._clock()):
            return None
        return current

    def leading(self) -> bool:
        return self.lease() is not None

    def outranked(self) -> bool:
        """A live replica runs a newer config (as of the last step): we must not lead."""
        view = self.config
        return view is not None and view.fingerprint == self.fingerprint and view.outranked

    async def wait_changed(self) -> None:
        """Return after the next time this replica starts or stops leading (or re-takes the
        lease under a new epoch)."""
        await self._changed.wait()

    async def lead(self, work: Callable[[Lease], Awaitable[None]]) -> None:
        """Run `work(lease)` whenever this replica leads; cancel it as soon as it does not.

        Runs beside `run` until cancelled. The work is cancelled when the lease ends on this
        process's own clock even if `run` is stuck, and when it is re-taken under a new epoch
        (the work's fenced writes would fail). `work` should still check `lease()` before each
        push: cancellation is the backstop, not the check. A `LeaseLost` from the work (a fenced
        write refused) makes this replica a standby instead of ending the process.
        """
        while True:
            lease = self.lease()
            if lease is None:
                await self.wait_changed()
                continue
            again = False
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._end_with, lease, tg.cancel_scope)
                    await work(lease)
                    tg.cancel_scope.cancel()
            except* LeaseLost:
                # A fenced write found the epoch moved on before our clock said so: a standby now.
                log.warning("lease.lost", merchant=self.merchant, epoch=lease.epoch, by="fence")
                if self._lease is not None and self._lease.epoch == lease.epoch:
                    self._lease = None
                    self._note()
            except* StoreUnavailable:
                # The database failed the work somewhere it does not retry itself: a state, not
                # the end of the process (logged once by the store's health). Start it again
                # after a renewal's time, under this lease if it still holds.
                again = True
            if again:
                with anyio.move_on_after(self.ttl / 3):
                    await self._while_holding(lease)
                continue
            # The work returned (or lost the lease): start it again only under a new lease.
            await self._while_holding(lease)

    async def _while_holding(self, lease: Lease) -> None:
        """Return once `lease` is no longer ours (expired on our clock, lost, or re-taken)."""
        while (current := self.lease()) is not None and current.epoch == lease.epoch:
            with anyio.move_on_after(max(0.0, current.deadline - self._clock())):
                await self.wait_changed()

    async def _end_with(self, lease: Lease, scope: anyio.CancelScope) -> None:
        await self._while_holding(lease)
        log.warning("lease.leading_ended", merchant=self.merchant, epoch=lease.epoch)
        # Record the end now: a renewal in flight (its connection waited through a database
        # outage) may still extend this epoch, and `lead` must be woken to start again then.
        self._note()
        scope.cancel()

    def _note(self) -> None:
        current = self.lease()
        seen = None if current is None else current.epoch
        if seen != self._seen:
            self._seen = seen
            self._changed.set()
            self._changed = anyio.Event()

    async def step(self) -> Lease | None:
        """One attempt: renew the lease we hold, or try to take it; returns the valid lease."""
        held = self._lease
        if self._released:
            return None
        try:
            # A renewal that cannot even get a connection within its period has failed: the
            # replica says so (readiness) at once, not after the pool's own wait.
            async with self._db.connection("write", wait=self.ttl / 3) as conn:
                if held is not None:
                    renewed = await leases.renew(conn, held, clock=self._clock)
                    if renewed is None:
                        log.warning("lease.lost", merchant=self.merchant, epoch=held.epoch)
                    self._lease = renewed
                if self.fingerprint is not None:  # after the renewal, which must not wait
                    self.config = await configs.beat(
                        conn, self.merchant, self.holder, self.fingerprint, self.ttl
                    )
                if self._lease is not None and self.outranked():
                    await self._step_down(conn, self._lease)
                if self._lease is None and self.outranked():
                    self._withhold()
                    self.leader = await leases.read(conn, self.merchant)
                elif self._lease is None:
                    self._withheld = False
                    self._lease = await leases.acquire(
                        conn, self.merchant, self.holder, self.ttl,
                        margin=self.margin, clock=self._clock,
                    )  # fmt: skip
                    if self._lease is not None:
                        log.info("lease.acquired", merchant=self.merchant, epoch=self._lease.epoch)
                        self.leader = None
                    else:
                        self.leader = await leases.read(conn, self.merchant)
            self._failing = False
        except StoreUnavailable as exc:
            # Keep what we hold: its local deadline ends it if the database stays away.
            if not self._failing:
                self._failing = True
                log.warning(
                    "lease.renew_failed", merchant=self.merchant, error=_cause(exc),
                    leading=self.leading(),
                )  # fmt: skip
        if self._released:  # released while this step was under way: it must not lead again
            self._lease = None
        self._note()
        return self.lease()

    async def run(self) -> None:
        """Renew or bid every third of the TTL, until cancelled; also notices a local expiry."""
        while True:
            await self.step()
            current = self._lease
            wait = self.ttl / 3
            if current is not None and self.leading():
                # Wake at the deadline too, so a missed renewal is reported on time.
                wait = min(wait, max(0.0, current.deadline - self._clock()))
            elif self.leader is not None and not self.outranked():
                # Bid right after the leader's lease runs out: failover takes the TTL, not more.
                wait = min(wait, max(0.0, self.leader.expires_in) + 0.05)
            poke = self._poke
            with anyio.move_on_after(wait):
                await poke.wait()
            if poke.is_set():
                self._poke = anyio.Event()
            self._note()

    async def _step_down(self, conn: AsyncConnection[TupleRow], held: Lease) -> None:
        """Hand the lease over to the replica with the newer config (NOTIFY tells it)."""
        view = self.config
        await leases.release(conn, held)
        self._lease = None
        log.warning(
            "lease.yielded", merchant=self.merchant, epoch=held.epoch,
            generation=None if view is None else view.generation,
            newest=None if view is None else view.newest,
        )  # fmt: skip

    def _withhold(self) -> None:
        """Say once per episode why this replica does not bid."""
        if not self._withheld:
            view = self.config
            log.warning(
                "lease.bid_withheld", merchant=self.merchant,
                generation=None if view is None else view.generation,
                newest=None if view is None else view.newest,
                hint="a live replica runs a newer config; this one stands by while it lives",
            )  # fmt: skip
            self._withheld = True

    async def release(self) -> None:
        """Give the lease up for good (graceful stop) so a standby takes over without waiting
        the TTL; this keeper bids no more. Our config stops counting as live at once, so an
        older one may lead if ours was the newest."""
        self._released = True
        held, self._lease = self._lease, None
        self._note()
        if held is None and self.fingerprint is None:
            return
        try:
            async with self._db.connection("write", wait=self.ttl / 3) as conn:
                # Not live any more before the standbys are told (NOTIFY) to bid: one of an
                # older config must not find us still live and wait another step.
                if self.fingerprint is not None:
                    await configs.forget(conn, self.merchant, self.holder)
                if held is not None:
                    await leases.release(conn, held)
                    log.info("lease.released", merchant=self.merchant, epoch=held.epoch)
        except StoreUnavailable as exc:
            log.warning("lease.release_failed", merchant=self.merchant, error=_cause(exc))


def _cause(exc: StoreUnavailable) -> str:
    """The psycopg error's class name, as these events always said."""
    return type(exc.__cause__ or exc).__name__
