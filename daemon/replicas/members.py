"""Which replicas are live: one heartbeat row each, renewed every sixth of `lease_ttl`.

The shape of a Kubernetes shard lease on PostgreSQL rows: `replica_members` holds each
replica's `expires_at` on the database's clock (replicas' clocks never need to agree, as with
the leader leases). A replica is live while its row has not expired; one that dies stops
renewing and drops out `lease_ttl` after its last beat; one that stops cleanly deletes its row,
so the others see it gone at their next beat instead of a TTL later.

Why a sixth, when leases are renewed every third: a dead replica's merchants move only once its
row has expired and a live replica has beaten since (its leases have run out by then: they were
renewed no later than its last beat). With a beat every sixth the row expires at most a TTL
after the death and is seen a sixth later: failover within `lease_ttl` + a sixth (17.5 s at
the default 15 s, inside the `lease_ttl` + 5 s the design promises; every third would be up to
`lease_ttl` + two thirds, 25 s). Each beat is one small transaction per replica.

Every beat also reads the live set and who holds each merchant's lease now (the share-out keeps
a merchant with its leader while that fits, `daemon.replicas.assignment`), so `live()` and
`leaders()` are at most a sixth of the TTL old. A beat that
fails (the database is away) keeps the last view: merchants are not reshuffled because this
replica cannot see, and the leases, not this view, say who may write.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import structlog
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from daemon.core.errors import StoreUnavailable
from daemon.store.pg.faults import Database

__all__ = ["Membership", "beat", "leave"]

log = structlog.get_logger("stocksync.members")

#: rows of replicas gone this long are deleted (a restarted process has a new name)
_FORGET_AFTER = 3600.0


async def beat(
    conn: AsyncConnection[TupleRow], holder: str, ttl: float
) -> tuple[frozenset[str], dict[str, str]]:
    """Say `holder` is live for another `ttl` seconds; return every live holder, it included,
    and the holder of every unexpired lease by merchant."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO replica_members (holder, expires_at)"
            " VALUES (%s, clock_timestamp() + make_interval(secs => %s))"
            " ON CONFLICT (holder) DO UPDATE SET expires_at = excluded.expires_at",
            (holder, ttl),
        )
        await conn.execute(
            "DELETE FROM replica_members"
            " WHERE expires_at < clock_timestamp() - make_interval(secs => %s)",
            (_FORGET_AFTER,),
        )
        cursor = await conn.execute(
            "SELECT holder FROM replica_members WHERE expires_at > clock_timestamp()"
        )
        rows = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT merchant, holder FROM leases"
            " WHERE holder <> '' AND expires_at > clock_timestamp()"
        )
        leaders = {str(row[0]): str(row[1]) for row in await cursor.fetchall()}
    return frozenset(str(row[0]) for row in rows), leaders


async def leave(conn: AsyncConnection[TupleRow], holder: str) -> None:
    """A clean stop: `holder` is not live from now on."""
    async with conn.transaction():
        await conn.execute("DELETE FROM replica_members WHERE holder = %s", (holder,))


class Membership:
    """This replica's heartbeat and its view of the live replicas."""

    def __init__(
        self,
        db: Database,
        holder: str,
        ttl: float,
        *,
        on_beat: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self._db = db
        self.holder = holder
        self.ttl = ttl
        #: called with the live set after every beat (the share-out also follows the configs,
        #: which change without a replica joining or leaving)
        self.on_beat = on_beat
        self._live: frozenset[str] = frozenset({holder})
        self._leaders: dict[str, str] = {}
        self._left = False
        self._poke = anyio.Event()

    def live(self) -> frozenset[str]:
        """The live replicas as of the last beat (this one always among them until it leaves)."""
        return self._live

    def leaders(self) -> dict[str, str]:
        """Who held each merchant's lease at the last beat (unexpired leases only)."""
        return self._leaders

    def poke(self) -> None:
        """Beat now (a lease was released: the replicas may have changed)."""
        self._poke.set()

    async def step(self) -> frozenset[str]:
        """One beat; keeps the last view if the database is away."""
        if self._left:
            return self._live
        try:
            async with self._db.connection("write", wait=self.ttl / 3) as conn:
                seen, leaders = await beat(conn, self.holder, self.ttl)
        except StoreUnavailable:
            return self._live  # the store's health says so, once
        if self._left:  # left while this beat was under way
            return self._live
        seen = seen | {self.holder}
        self._leaders = leaders
        if seen != self._live:
            log.info("replicas.changed", live=sorted(seen), joined=sorted(seen - self._live),
                     left=sorted(self._live - seen))  # fmt: skip
            self._live = seen
        if self.on_beat is not None:
            self.on_beat(seen)
        return seen

    async def run(self) -> None:
        """Beat every sixth of the TTL (or when poked), until cancelled."""
        while True:
            await self.step()
            poke = self._poke
            with anyio.move_on_after(self.ttl / 6):
                await poke.wait()
            if poke.is_set():
                self._poke = anyio.Event()

    async def leave(self) -> None:
        """Delete our row: the others count us out at their next beat. Beats no more."""
        self._left = True
        try:
            async with self._db.connection("write", wait=self.ttl / 3) as conn:
                await leave(conn, self.holder)
        except StoreUnavailable:
            pass  # our row expires on its own within the TTL
