"""One process's part in a PostgreSQL deployment, as the daemon needs it: one object to wire.

The pipeline keeps doing the work. A `Replica` decides when it may (`keeper.lead`), gives it a
store whose writes are fenced by the lease, carries the webhooks every replica took to the
leader (`enqueue` on any replica, `consume_lookups` on the leader), and shares keyCRM's window
with whoever leads next (`record_request`, `inherit_budget`). It lives as long as the process;
pipelines come and go inside `keeper.lead`.

    replica = await Replica.open(dsn, merchant, password=..., ttl=config.daemon.lease_ttl)
    async with anyio.create_task_group() as tg:
        await tg.start(replica.run)
        tg.start_soon(replica.keeper.lead, lead)   # lead(lease): inherit_budget, recover, run
    ...                                            # webhooks on any replica: await enqueue(skus)
    await replica.close()                          # hands the lease over at once
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from psycopg import Error as PsycopgError

from daemon.config.dsn import describe
from daemon.config.fingerprint import short
from daemon.core.errors import StartupError, StoreUnavailable
from daemon.keycrm.budget import RequestBudget
from daemon.replicas.leader import LeaseKeeper
from daemon.store import PostgresStore, StoreHealth
from daemon.store.pg import budget as shared_budget
from daemon.store.pg import lookups
from daemon.store.pg.connect import Pool, open_pool
from daemon.store.pg.faults import HINT, Database, describe_error
from daemon.store.pg.lease import Lease, LeaseLost, make_holder, read
from daemon.store.pg.lookups import Wakeup
from daemon.store.pg.merchants import prepare
from daemon.store.pg.migrate import migrate

__all__ = ["Replica"]

log = structlog.get_logger("stocksync.replica")


class Replica:
    """The pool, the lease keeper, the look-up listener and the fenced store of one process."""

    def __init__(
        self,
        pool: Pool,
        dsn: str,
        merchant: str,
        *,
        password: str | None = None,
        ttl: float = 15.0,
        holder: str | None = None,
        poll: float = 2.0,
        fingerprint: str | None = None,
    ) -> None:
        self.pool = pool
        self.dsn = dsn
        self.merchant = merchant
        self.poll = poll
        #: one fault episode for the whole process: the store, the lease and the queue share it
        self.health = StoreHealth(describe(dsn), hint=HINT)
        self.db = Database(pool, self.health)
        self.keeper = LeaseKeeper(
            pool, merchant, holder or make_holder(), ttl, fingerprint=fingerprint, db=self.db
        )
        self.wakeup = Wakeup(dsn, merchant, password=password, on_released=self.keeper.poke)
        self.store = PostgresStore(
            pool, merchant=merchant, fence=self.keeper.lease, health=self.health
        )

    @classmethod
    async def open(
        cls,
        dsn: str,
        merchant: str,
        *,
        password: str | None = None,
        ttl: float = 15.0,
        holder: str | None = None,
        max_size: int = 8,
        fingerprint: str | None = None,
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
                await prepare(conn, merchant)  # the merchant's schema
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, PsycopgError):
                raise StartupError(f"{describe(dsn)}: {describe_error(exc)}") from exc
            raise
        log.info("replica.opened", database=describe(dsn), merchant=merchant)
        return cls(
            pool, dsn, merchant, password=password, ttl=ttl, holder=holder, fingerprint=fingerprint
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the lease and listen for look-ups until cancelled; started once both run."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.wakeup.run)
            await self.keeper.step()  # lead at once if nobody does, rather than after TTL/3
            tg.start_soon(self.keeper.run)
            task_status.started()

    async def close(self) -> None:
        """Hand the lease over (a standby, told by NOTIFY, takes it at once) and close the
        pool; after the leader's work has stopped."""
        await self.keeper.release()
        await self.pool.close()

    # --- webhooks: any replica enqueues, the leader consumes -----------------------------------

    async def enqueue(self, skus: Sequence[str]) -> int:
        """Queue a webhook's SKUs durably; answer the webhook only after this returns.
        Raises `StoreUnavailable`."""
        async with self.db.connection("write") as conn:
            return await lookups.enqueue(conn, self.merchant, skus)

    async def enqueue_uncapped(self, skus: Sequence[str]) -> int:
        """`enqueue` for the order feed: the merchant's queue has no cap, so nothing is turned
        away (the number the feed's `Enqueue` returns). Raises `StoreUnavailable`."""
        await self.enqueue(skus)
        return 0

    async def consume_lookups(
        self,
        lease: Lease,
        handle: Callable[[list[str]], Awaitable[None]],
        *,
        batch: int = 50,
    ) -> None:
        """Leader: claim queued SKUs, `handle` them (look up and store), then drop them from
        the queue; until cancelled. If `handle` raises, its SKUs are made claimable again at
        once (if the database lets us: else by the next epoch, or after `claim`'s
        `reclaim_after`) and the error propagates. Raises `StoreUnavailable`, `LeaseLost`."""
        while True:
            async with self.db.connection("write") as conn:
                claimed = await lookups.claim(conn, lease, batch)
            if not claimed:
                await self.wakeup.wait(self.poll)
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
                async with self.db.connection("write", wait=self.keeper.ttl / 3) as conn:
                    await lookups.unclaim(conn, lease, claimed)
            except (StoreUnavailable, LeaseLost):
                pass  # claimed under this epoch: the next leader, or `reclaim_after`, frees them

    # --- keyCRM's window, shared -----------------------------------------------------------------

    async def record_request(self) -> None:
        """Count one keyCRM request (answered now) in the merchant's shared window."""
        async with self.db.connection("write") as conn:
            await shared_budget.record(conn, self.merchant)

    async def inherit_budget(self, budget: RequestBudget) -> int:
        """A new leader counts its predecessor's requests of the last window; returns how many.
        Raises `StoreUnavailable`."""
        async with self.db.connection("read") as conn:
            ages = await shared_budget.recent_ages(conn, self.merchant, budget.window)
        budget.preload(ages)
        return len(ages)

    # --- what /status shows ----------------------------------------------------------------------

    def config_differs(self) -> bool:
        """Our config is not the leader's (as of the last lease step): metric and readiness."""
        view = self.keeper.config
        return view is not None and view.fingerprint == self.keeper.fingerprint and view.differs

    def config_status(self) -> dict[str, Any] | None:
        """Our config and the leader's, by fingerprint (first 12 digits) and generation."""
        view = self.keeper.config
        if view is None:
            return None
        return {
            "fingerprint": short(view.fingerprint),
            "generation": view.generation,
            "leader_fingerprint": short(view.leader_fingerprint),
            "leader_generation": view.leader_generation,
            "newest_live_generation": view.newest,
            "differs_from_leader": self.config_differs(),
        }

    async def status(self) -> dict[str, Any]:
        """Who leads this merchant, this replica's role, and the look-up queue."""
        lease = self.keeper.lease()
        async with self.db.connection("read") as conn:
            info = await read(conn, self.merchant)
            waiting, oldest = await lookups.depth(conn, self.merchant)
        return {
            "merchant": self.merchant,
            "replica": self.keeper.holder,
            "role": "leader" if lease is not None else "standby",
            "leader": None if info is None or info.expires_in <= 0 else info.holder,
            "epoch": None if info is None else info.epoch,
            "lookups_queued": waiting,
            "lookups_oldest_seconds": round(oldest, 3),
            "config": self.config_status(),
        }
