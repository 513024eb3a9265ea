"""One process's part in a PostgreSQL deployment, as the daemon needs it: one object to wire.

The pipelines keep doing the work. A `Replica` serves every merchant of the deployment: it
heartbeats (`members`), shares the merchants out over the live replicas (`assignment`), keeps
one lease per merchant (`leader.LeaseKeeper`, bidding only for the merchants it is given, and
handing over, drained, those it is not), gives each merchant a store whose writes are fenced by
that merchant's lease, carries webhooks to whichever replica leads their merchant (`enqueue` on
any replica, `consume_lookups` on the leader) over one LISTEN connection, and shares each
merchant's keyCRM window with whoever leads it next (`record_request`, `inherit_budget`). It
lives as long as the process; each merchant's pipelines come and go inside `lead`.

    replica = await Replica.open(dsn, ["acme", "zeta"], password=..., ttl=daemon.lease_ttl,
                                 fingerprint={"acme": ..., "zeta": ...})
    async with anyio.create_task_group() as tg:
        await tg.start(replica.run)
        tg.start_soon(replica.lead, lead, drain)   # lead(lease): lease.merchant's pipeline;
                                                   # drain(merchant): ask it to finish
    ...                                            # webhooks: await enqueue(merchant, skus)
    await replica.set_merchants(names)             # SIGHUP: start new ones, hand removed ones over
    await replica.close()                          # leaves, and hands every lease over at once
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import structlog
from anyio.abc import TaskStatus
from psycopg import Error as PsycopgError

from daemon.config.dsn import describe
from daemon.core.errors import StartupError, StoreUnavailable
from daemon.keycrm.budget import RequestBudget
from daemon.replicas import report
from daemon.replicas.assignment import assign
from daemon.replicas.leader import LeaseKeeper
from daemon.replicas.members import Membership
from daemon.store import PostgresStore, StoreHealth
from daemon.store.pg import budget as shared_budget
from daemon.store.pg import lookups
from daemon.store.pg.connect import Pool, open_pool
from daemon.store.pg.faults import HINT, Database, describe_error
from daemon.store.pg.lease import Lease, LeaseLost, make_holder
from daemon.store.pg.lookups import Wakeup
from daemon.store.pg.merchants import prepare
from daemon.store.pg.migrate import migrate

__all__ = ["Replica"]

log = structlog.get_logger("stocksync.replica")

#: a merchant's leader work: runs while this replica leads `lease.merchant`
Work = Callable[[Lease], Awaitable[None]]
#: asks a merchant's leader work to finish (its merchant is handed over)
Drain = Callable[[str], None]


class Replica:
    """The pool, the membership, one lease keeper and one fenced store per merchant, and the
    look-up listener for all of them, of one process."""

    def __init__(
        self,
        pool: Pool,
        dsn: str,
        merchants: str | Iterable[str],
        *,
        password: str | None = None,
        ttl: float = 15.0,
        holder: str | None = None,
        poll: float = 2.0,
        fingerprint: str | Mapping[str, str] | None = None,
        drain_timeout: float | None = None,
    ) -> None:
        self.pool = pool
        self.dsn = dsn
        self.poll = poll
        self.ttl = ttl
        self.holder = holder or make_holder()
        self.drain_timeout = drain_timeout
        #: one fault episode for the whole process: the stores, the leases and the queue share it
        self.health = StoreHealth(describe(dsn), hint=HINT)
        self.db = Database(pool, self.health)
        self.membership = Membership(self.db, self.holder, ttl, on_beat=self._replicas_changed)
        self.wakeup = Wakeup(dsn, password=password, on_released=self._released)
        #: one keeper and one store per merchant this replica serves, in config order
        self.keepers: dict[str, LeaseKeeper] = {}
        self.stores: dict[str, PostgresStore] = {}
        self._owners: dict[str, str] = {}  # the share-out, as of the last change
        self._tasks: anyio.abc.TaskGroup | None = None  # while `run` runs
        self._keeping: dict[str, anyio.CancelScope] = {}
        self._leads: anyio.abc.TaskGroup | None = None  # while `lead` runs
        self._leading: dict[str, anyio.CancelScope] = {}
        self._work: tuple[Work, Drain | None] | None = None
        self._rechecking = False  # a beat for released leases is under way
        self._released_meanwhile: set[str] = set()
        names = [merchants] if isinstance(merchants, str) else list(merchants)
        for name in names:
            self._add(name, _fingerprint_of(fingerprint, name))
        self._reassign()

    # --- one merchant, as the single-merchant shell wires it -------------------------------------

    @property
    def merchants(self) -> tuple[str, ...]:
        return tuple(self.keepers)

    @property
    def keeper(self) -> LeaseKeeper:
        """The only merchant's keeper (a single-merchant deployment)."""
        return self.keepers[self._only()]

    @property
    def store(self) -> PostgresStore:
        """The only merchant's store (a single-merchant deployment)."""
        return self.stores[self._only()]

    @property
    def merchant(self) -> str:
        return self._only()

    def _only(self) -> str:
        if len(self.keepers) != 1:
            raise ValueError(f"this replica serves {len(self.keepers)} merchants: name one")
        return next(iter(self.keepers))

    @classmethod
    async def open(
        cls,
        dsn: str,
        merchants: str | Iterable[str],
        *,
        password: str | None = None,
        ttl: float = 15.0,
        holder: str | None = None,
        max_size: int = 8,
        fingerprint: str | Mapping[str, str] | None = None,
        drain_timeout: float | None = None,
    ) -> Replica:
        """Open the pool and bring the schema up to date (replicas starting together: once).

        A database that cannot be reached at start is a `StartupError` (one line, exit 1: the
        supervisor starts us again), never a traceback."""
        try:
            pool = await open_pool(dsn, password=password, max_size=max_size)
        except PsycopgError as exc:
            raise StartupError(f"cannot reach {describe(dsn)}: {describe_error(exc)}") from exc
        try:
            async with pool.connection() as conn:
                await migrate(conn)
            await _prepare_all(pool, [merchants] if isinstance(merchants, str) else merchants)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, PsycopgError):
                raise StartupError(f"{describe(dsn)}: {describe_error(exc)}") from exc
            raise
        replica = cls(
            pool, dsn, merchants, password=password, ttl=ttl, holder=holder,
            fingerprint=fingerprint, drain_timeout=drain_timeout,
        )  # fmt: skip
        log.info("replica.opened", database=describe(dsn), merchants=list(replica.keepers),
                 replica=replica.holder)  # fmt: skip
        return replica

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat, keep the leases and listen for look-ups until cancelled; started once all
        run and every merchant given to this replica that nobody leads is led."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.wakeup.run)
            await self.membership.step()  # who is live, before the first bid
            self._reassign()
            tg.start_soon(self.membership.run)
            self._tasks = tg
            try:
                for name in list(self.keepers):
                    await self._start_keeping(name)
                task_status.started()
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    async def lead(self, work: Work, drain: Drain | None = None) -> None:
        """Run `work(lease)` for each merchant while this replica leads it (`LeaseKeeper.lead`),
        merchants added later included; `drain(merchant)` asks a merchant's work to finish before
        it is handed over. Until cancelled."""
        async with anyio.create_task_group() as tg:
            self._work, self._leads = (work, drain), tg
            try:
                for name in list(self.keepers):
                    self._start_leading(name)
                await anyio.sleep_forever()
            finally:
                self._work, self._leads = None, None

    async def leave(self) -> None:
        """Leave (the others count us out at once) and hand every lease over (a standby, told
        by NOTIFY, takes it at once); after the leader's work has stopped."""
        await self.membership.leave()
        async with anyio.create_task_group() as tg:
            for keeper in list(self.keepers.values()):
                tg.start_soon(keeper.release)

    async def close(self) -> None:
        """`leave`, then close the pool."""
        await self.leave()
        await self.pool.close()

    # --- the merchants this replica serves -------------------------------------------------------

    async def set_merchants(
        self, names: Iterable[str], fingerprints: Mapping[str, str] | None = None
    ) -> None:
        """Serve exactly these merchants from now on (SIGHUP): a new one is bid for if it is
        given to this replica; a removed one led here is drained and released, then forgotten.
        `fingerprints` updates the configs published with the leases."""
        wanted = list(dict.fromkeys(names))
        new = [name for name in wanted if name not in self.keepers]
        async with self.db.connection("write") as conn:
            for name in new:
                await prepare(conn, name)  # the merchant's schema, before its store is used
        for name in wanted:
            if name not in self.keepers:
                self._add(name, None if fingerprints is None else fingerprints.get(name))
            elif fingerprints is not None and name in fingerprints:
                self.keepers[name].fingerprint = fingerprints[name]
        removed = [name for name in self.keepers if name not in wanted]
        for name in removed:
            self.keepers[name].retired = True  # bids no more, leaves the share-out
        self._reassign()
        for name in wanted:
            if name not in self._keeping and self._tasks is not None:
                await self._start_keeping(name)
            if name not in self._leading:
                self._start_leading(name)
        if removed:
            async with anyio.create_task_group() as tg:
                for name in removed:
                    tg.start_soon(self._remove, name)
            log.info("replica.merchants_removed", merchants=removed)

    def _add(self, name: str, fingerprint: str | None) -> None:
        keeper = LeaseKeeper(
            self.pool, name, self.holder, self.ttl, fingerprint=fingerprint, db=self.db,
            wanted=lambda: self._owners.get(name) == self.holder,
            drain_timeout=self.drain_timeout,
        )  # fmt: skip
        keeper.on_changed = self._reassign  # what we lead counts at once, not at the next beat
        self.keepers[name] = keeper
        # PostgreSQL keeps every merchant in one database; the store reads and writes `name`'s
        # rows, fenced by `name`'s lease.
        self.stores[name] = PostgresStore(
            self.pool, merchant=name, fence=keeper.lease, health=self.health
        )
        self.wakeup.watch(name)

    async def _remove(self, name: str) -> None:
        """Hand a removed merchant over (drained, as on a join) and stop keeping it."""
        keeper = self.keepers[name]
        keeper.poke()
        running = self._tasks is not None  # else nobody steps: release at once
        with anyio.move_on_after(keeper.drain_timeout + self.ttl if running else 0):
            while keeper.holding():
                with anyio.move_on_after(self.ttl / 3):
                    await keeper.wait_changed()
                keeper.poke()
        if (scope := self._leading.pop(name, None)) is not None:
            scope.cancel()
        await keeper.release()  # if the drain overran: released here, the work cancelled
        if (scope := self._keeping.pop(name, None)) is not None:
            scope.cancel()
        del self.keepers[name], self.stores[name]
        self.wakeup.unwatch(name)

    async def _start_keeping(self, name: str) -> None:
        """Bid at once (lead now if nobody does, rather than after TTL/3), then keep bidding."""
        assert self._tasks is not None
        keeper = self.keepers[name]
        await keeper.step()
        scope = self._keeping[name] = anyio.CancelScope()

        async def keep() -> None:
            with scope:
                await keeper.run()

        self._tasks.start_soon(keep)

    def _start_leading(self, name: str) -> None:
        if self._leads is None or self._work is None:
            return
        work, drain = self._work
        keeper = self.keepers[name]
        scope = self._leading[name] = anyio.CancelScope()

        async def lead() -> None:
            with scope:
                await keeper.lead(work, drain=None if drain is None else lambda: drain(name))

        self._leads.start_soon(lead)

    # --- the share-out ---------------------------------------------------------------------------

    def owner(self, merchant: str) -> str | None:
        """The live replica the share-out gives `merchant` to, as this replica sees it."""
        return self._owners.get(merchant)

    def _reassign(self) -> None:
        """Share the merchants out again: the live replicas or the merchants changed."""
        active = [name for name, keeper in self.keepers.items() if not keeper.retired]
        before = self._owners
        live = self.membership.live()
        self._owners = assign(active, live, self._eligible(active), self._current(live))
        for name, keeper in self.keepers.items():  # ours now, or no longer: act on it now
            if (before.get(name) == self.holder) != (self._owners.get(name) == self.holder):
                keeper.poke()

    def _current(self, live: frozenset[str]) -> dict[str, str]:
        """Who leads each merchant now: the database's view at the last beat, ours for ours."""
        current = {m: h for m, h in self.membership.leaders().items() if h in live}
        for name, keeper in self.keepers.items():
            if keeper.holding() and not keeper.handing_over():
                current[name] = self.holder
            elif current.get(name) == self.holder:
                del current[name]
        return current

    def _eligible(self, merchants: list[str]) -> dict[str, set[str]]:
        """Per merchant, the live replicas of its newest config (`configs`): one of an older
        config would not bid, and the merchant would wait for the safety net."""
        eligible = {}
        for name in merchants:
            view = self.keepers[name].config
            if view is not None and view.newest_holders:
                eligible[name] = set(view.newest_holders)
        return eligible

    def _replicas_changed(self, live: frozenset[str]) -> None:
        self._reassign()

    def _released(self, merchant: str) -> None:
        """A merchant's leader released its lease: look at the replicas again, then bid (one
        beat for a burst of releases, as when a replica leaves)."""
        if merchant not in self.keepers:
            return
        self._released_meanwhile.add(merchant)
        if self._tasks is not None and not self._rechecking:
            self._rechecking = True
            self._tasks.start_soon(self._recheck)
        elif self._tasks is None:
            self.keepers[merchant].poke()

    async def _recheck(self) -> None:
        try:
            await self.membership.step()  # a leaving replica deleted its row before releasing
        finally:
            self._rechecking = False
        names, self._released_meanwhile = self._released_meanwhile, set()
        for name in names:
            if (keeper := self.keepers.get(name)) is not None:
                keeper.poke()

    def leading(self) -> frozenset[str]:
        """The merchants this replica leads now (`stocksync_merchants{role="leader"}`)."""
        return frozenset(name for name, keeper in self.keepers.items() if keeper.leading())

    def standby(self) -> frozenset[str]:
        """The merchants this replica serves but does not lead (`role="standby"`)."""
        return frozenset(self.keepers) - self.leading()

    # --- webhooks: any replica enqueues, the leader consumes -----------------------------------

    async def enqueue(self, merchant: str, skus: Sequence[str]) -> int:
        """Queue a webhook's SKUs durably for `merchant` (led here or elsewhere); answer the
        webhook only after this returns. Raises `StoreUnavailable`."""
        async with self.db.connection("write") as conn:
            return await lookups.enqueue(conn, merchant, skus)

    async def enqueue_uncapped(self, merchant: str, skus: Sequence[str]) -> int:
        """`enqueue` for the order feed: the merchant's queue has no cap, so nothing is turned
        away (the number the feed's `Enqueue` returns). Raises `StoreUnavailable`."""
        await self.enqueue(merchant, skus)
        return 0

    async def consume_lookups(
        self,
        lease: Lease,
        handle: Callable[[list[str]], Awaitable[None]],
        *,
        batch: int = 50,
    ) -> None:
        """Leader of `lease.merchant`: claim its queued SKUs, `handle` them (look up and store),
        then drop them from the queue; until cancelled. If `handle` raises, its SKUs are made
        claimable again at once (if the database lets us: else by the next epoch, or after
        `claim`'s `reclaim_after`) and the error propagates. Raises `StoreUnavailable`,
        `LeaseLost`."""
        while True:
            async with self.db.connection("write") as conn:
                claimed = await lookups.claim(conn, lease, batch)
            if not claimed:
                await self.wakeup.wait(self.poll, lease.merchant)
                continue
            try:
                await handle([c.sku for c in claimed])
            except BaseException:
                await self._unclaim(lease, claimed)
                raise
            async with self.db.connection("write") as conn:
                await lookups.done(conn, lease, claimed)

    async def _unclaim(self, lease: Lease, claimed: list[lookups.Claimed]) -> None:
        """Best effort, shielded: a cleanup must not replace the error that caused it, nor
        hold a cancellation up for long while the database is away (a renewal's wait)."""
        with anyio.CancelScope(shield=True):
            try:
                async with self.db.connection("write", wait=self.ttl / 3) as conn:
                    await lookups.unclaim(conn, lease, claimed)
            except (StoreUnavailable, LeaseLost):
                pass  # claimed under this epoch: the next leader, or `reclaim_after`, frees them

    # --- keyCRM's window, shared -----------------------------------------------------------------

    async def record_request(self, merchant: str) -> None:
        """Count one keyCRM request (answered now) in the merchant's shared window."""
        async with self.db.connection("write") as conn:
            await shared_budget.record(conn, merchant)

    async def inherit_budget(self, merchant: str, budget: RequestBudget) -> int:
        """A new leader counts its predecessor's requests of the last window; returns how many.
        Raises `StoreUnavailable`."""
        async with self.db.connection("read") as conn:
            ages = await shared_budget.recent_ages(conn, merchant, budget.window)
        budget.preload(ages)
        return len(ages)

    # --- what /status shows ----------------------------------------------------------------------

    def config_differs(self, merchant: str) -> bool:
        """Our config of `merchant` is not its leader's (as of the last lease step)."""
        return report.config_differs(self.keepers[merchant])

    async def status(self, merchant: str) -> dict[str, Any]:
        """Who leads this merchant, who should, this replica's role, and the look-up queue."""
        async with self.db.connection("read") as conn:
            return await report.merchant_status(conn, self.keepers[merchant], self.owner(merchant))

    def replicas_status(self) -> dict[str, Any]:
        """This replica, the live ones, and how many merchants it leads and stands by for."""
        return {
            "replica": self.holder,
            "live": sorted(self.membership.live()),
            "leading": sorted(self.leading()),
            "standby": sorted(self.standby()),
        }


def _fingerprint_of(fingerprint: str | Mapping[str, str] | None, merchant: str) -> str | None:
    if fingerprint is None or isinstance(fingerprint, str):
        return fingerprint
    return fingerprint.get(merchant)


async def _prepare_all(pool: Pool, merchants: Iterable[str]) -> None:
    """Every merchant's schema made or brought up to date, a few side by side: up to date
    costs one read each (200 merchants: a fraction of a second); a first start makes them
    (some 40 ms each; 200 one after another would hold the start back for 8 s)."""
    limit = anyio.Semaphore(4)

    async def one(name: str) -> None:
        async with limit, pool.connection() as conn:
            await prepare(conn, name)

    async with anyio.create_task_group() as tg:
        for name in merchants:
            tg.start_soon(one, name)
