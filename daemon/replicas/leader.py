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

Given `wanted` (the merchant's share-out over the live replicas, `daemon.replicas.assignment`),
a keeper bids only for a merchant assigned to this replica, or for one nobody has led for longer
than the TTL as this replica sees it (replicas that disagree for a moment must not leave a
merchant unled). A leader whose merchant is assigned elsewhere hands it over: the work is asked
to finish (`drain`) and given `drain_timeout` while the lease is still renewed, then cancelled
if it has not, and only then is the lease released (NOTIFY: the new owner bids at once). The
handover never makes two leaders: the new owner can take the lease only once it is released.
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
        wanted: Callable[[], bool] | None = None,
        drain_timeout: float | None = None,
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
        #: whether the share-out gives this replica the merchant (None: always, one replica)
        self.wanted = wanted
        #: how long a handed-over leader's work may take to finish before it is cancelled
        self.drain_timeout = ttl / 2 if drain_timeout is None else drain_timeout
        #: the merchant left this replica's config (SIGHUP): hand it over, bid no more
        self.retired = False
        #: called when this replica starts or stops leading (the share-out keeps leaders put)
        self.on_changed: Callable[[], None] | None = None
        self._lock = anyio.Lock()  # a step and a handover's release never interleave
        self._handover: int | None = None  # the epoch being drained to hand over
        self._working = 0  # `lead` runs the work under the lease
        self._unled_since: float | None = None  # when we first saw nobody lead (our clock)

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

    def holding(self) -> bool:
        """We hold the lease in the database's eyes, valid on our clock or not (a renewal may
        extend it), or are handing it over: not yet free for another replica."""
        return self._lease is not None or self._handover is not None

    def handing_over(self) -> bool:
        """The merchant is assigned elsewhere and its work is draining before the release."""
        return self._handover is not None

    def assigned(self) -> bool:
        """The share-out gives us this merchant (always, without one)."""
        if self.retired:
            return False
        return self.wanted is None or self.wanted()

    def _may_bid(self) -> bool:
        """Assigned to us, or unled for longer than the TTL as far as we have seen."""
        if self.retired:
            return False
        since = self._unled_since
        return self.assigned() or (since is not None and self._clock() - since > self.ttl)

    def _track(self, info: leases.LeaseInfo | None) -> None:
        """Note when we first saw the merchant unled (on our clock: a lease that ran out long
        ago, as at the start of a whole deployment, must not make every replica bid at once)."""
        if info is None or info.expires_in <= 0:
            if self._unled_since is None:
                self._unled_since = self._clock()
        else:
            self._unled_since = None

    def outranked(self) -> bool:
        """A live replica runs a newer config (as of the last step): we must not lead."""
        view = self.config
        return view is not None and view.fingerprint == self.fingerprint and view.outranked

    async def wait_changed(self) -> None:
        """Return after the next time this replica starts or stops leading (or re-takes the
        lease under a new epoch)."""
        await self._changed.wait()

    async def lead(
        self,
        work: Callable[[Lease], Awaitable[None]],
        *,
        drain: Callable[[], None] | None = None,
    ) -> None:
        """Run `work(lease)` whenever this replica leads; cancel it as soon as it does not.

        Runs beside `run` until cancelled. The work is cancelled when the lease ends on this
        process's own clock even if `run` is stuck, and when it is re-taken under a new epoch
        (the work's fenced writes would fail). `work` should still check `lease()` before each
        push: cancellation is the backstop, not the check. A `LeaseLost` from the work (a fenced
        write refused) makes this replica a standby instead of ending the process.

        When the merchant is handed over, `drain()` asks the work to finish (a pipeline's
        `stop`); it is cancelled if it has not within `drain_timeout` (without `drain`: at once),
        and the lease is released once it has ended.
        """
        while True:
            lease = self.lease()
            if lease is None:
                await self.wait_changed()
                continue
            again = False
            self._working += 1
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._end_with, lease, tg.cancel_scope, drain)
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
            finally:
                self._working -= 1
            if self._handover is not None:
                with anyio.CancelScope(shield=True):  # the drain is done: the release must be
                    await self._hand_over(lease)
                continue
            if again:
                with anyio.move_on_after(self.ttl / 3):
                    await self._while_holding(lease)
                continue
            # The work returned (or lost the lease): start it again only under a new lease.
            await self._while_holding(lease)

    async def _while_holding(self, lease: Lease, *, or_handover: bool = False) -> None:
        """Return once `lease` is no longer ours (expired on our clock, lost, or re-taken), or
        with `or_handover`, once it is to be handed over."""
        while (current := self.lease()) is not None and current.epoch == lease.epoch:
            if or_handover and self._handover is not None:
                return
            with anyio.move_on_after(max(0.0, current.deadline - self._clock())):
                await self.wait_changed()

    async def _end_with(
        self, lease: Lease, scope: anyio.CancelScope, drain: Callable[[], None] | None
    ) -> None:
        await self._while_holding(lease, or_handover=True)
        if self._handover is not None and self.lease() is not None:
            log.info("lease.draining", merchant=self.merchant, epoch=lease.epoch)
            if drain is not None:
                drain()
                with anyio.move_on_after(self.drain_timeout):
                    await self._while_holding(lease)  # or until the work returns
            scope.cancel()
            return
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
            self._wake()
            if self.on_changed is not None:
                self.on_changed()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _hand_over(self, lease: Lease) -> None:
        """The drained work has ended: release the lease so its new owner takes it at once."""
        async with self._lock:
            self._handover = None
            if self._lease is None or self._lease.epoch != lease.epoch:
                return  # lost, or released by a stop, meanwhile
            self._lease = None
            self._note()
            try:
                async with self._db.connection("write", wait=self.ttl / 3) as conn:
                    await leases.release(conn, lease)
                log.info("lease.handed_over", merchant=self.merchant, epoch=lease.epoch)
            except StoreUnavailable as exc:  # it runs out on its own within the TTL
                log.warning("lease.release_failed", merchant=self.merchant, error=_cause(exc))

    async def step(self) -> Lease | None:
        """One attempt: renew the lease we hold, or try to take it; returns the valid lease."""
        async with self._lock:
            return await self._step()

    async def _step(self) -> Lease | None:
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
                if self._lease is not None and not self.assigned():
                    await self._give_up(conn, self._lease)
                if self._lease is None and self.outranked():
                    self._withhold()
                    self.leader = await leases.read(conn, self.merchant)
                elif self._lease is None and not self._may_bid():
                    self._withheld = False
                    self.leader = await leases.read(conn, self.merchant)
                    self._track(self.leader)
                elif self._lease is None:
                    self._withheld = False
                    self._lease = await leases.acquire(
                        conn, self.merchant, self.holder, self.ttl,
                        margin=self.margin, clock=self._clock,
                    )  # fmt: skip
                    if self._lease is not None:
                        log.info("lease.acquired", merchant=self.merchant, epoch=self._lease.epoch,
                                 assigned=self.assigned())  # fmt: skip
                        self.leader = None
                        self._unled_since = None
                    else:
                        self.leader = await leases.read(conn, self.merchant)
                        self._track(self.leader)
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

    async def _give_up(self, conn: AsyncConnection[TupleRow], held: Lease) -> None:
        """The merchant is assigned elsewhere: release at once if no work runs under the lease,
        else have `lead` drain it first (it releases once the work has ended)."""
        if self._working and not self._released:
            if self._handover is None:
                self._handover = held.epoch
                self._wake()
            return
        await leases.release(conn, held)
        self._lease = None
        self._handover = None
        log.info(
            "lease.handed_over",
            merchant=self.merchant,
            epoch=held.epoch,
        )

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
        async with self._lock:  # not while a step or a handover is under way
            held, self._lease = self._lease, None
            self._handover = None
            self._note()
            await self._release(held)

    async def _release(self, held: Lease | None) -> None:
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
