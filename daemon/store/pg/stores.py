"""Every merchant's store of one process over one pool: 200 merchants are not 200 pools.

    stores = await PostgresStores.open(dsn, password=..., max_size=16)
    acme = await stores.store_for("acme", fence=keeper.lease)   # its schema made on first use
    ...
    await stores.close()                                         # the stores' calls have ended

A store is cheap (a few attributes over the shared pool); `store_for` creates or migrates the
merchant's schema once per process (`daemon.store.pg.merchants.prepare`) and then hands out a
new store each call, so a pipeline rebuilt by a reload gets a fresh one with its own fence.
By default the stores share the process's `StoreHealth`: one database outage is one episode,
not one per merchant.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from psycopg import OperationalError

from daemon.config.dsn import describe
from daemon.core.errors import StateUnusable
from daemon.store.health import StoreHealth
from daemon.store.pg.backend import PostgresStore
from daemon.store.pg.base import HISTORY_PER_ITEM
from daemon.store.pg.connect import Pool, open_pool
from daemon.store.pg.faults import HINT, Database
from daemon.store.pg.lease import Lease
from daemon.store.pg.merchants import prepare
from daemon.store.pg.migrate import migrate

__all__ = ["PostgresStores"]


class PostgresStores:
    """One pool, migrated once, and a `PostgresStore` per merchant over it."""

    def __init__(
        self, pool: Pool, *, location: str = "postgresql", health: StoreHealth | None = None
    ) -> None:
        self.pool = pool
        self.location = location
        #: the one fault episode of the process, unless a store is given its own
        self.health = health or StoreHealth(location, hint=HINT)
        self._db = Database(pool, self.health)
        self._prepared: set[str] = set()
        #: one lock per merchant: merchants are prepared side by side (a new schema takes
        #: ~40 ms; 200 of them one after another would hold the last back for 8 s)
        self._preparing: dict[str, anyio.Lock] = {}

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        password: str | None = None,
        max_size: int = 8,
        acquire_timeout: float = 10.0,
    ) -> PostgresStores:
        """Open the pool and bring the database's shared tables up to date (merchants' schemas
        come with `store_for`). Raises `StateUnusable` when the database cannot be reached."""
        location = describe(dsn)
        try:
            pool = await open_pool(
                dsn, password=password, max_size=max_size, acquire_timeout=acquire_timeout
            )
        except OperationalError as exc:
            raise StateUnusable(f"{location}: cannot reach the database ({exc})") from exc
        try:
            async with pool.connection() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, location=location)

    async def prepare(self, merchant: str) -> None:
        """Create or migrate the merchant's schema, once per process. Raises
        `StoreUnavailable` (the database is away: try again later), `SchemaTooNew`."""
        if merchant in self._prepared:
            return
        async with self._preparing.setdefault(merchant, anyio.Lock()):
            if merchant not in self._prepared:
                async with self._db.connection("write") as conn:
                    await prepare(conn, merchant)
                self._prepared.add(merchant)

    async def store_for(
        self,
        merchant: str,
        *,
        fence: Callable[[], Lease | None] | None = None,
        health: StoreHealth | None = None,
        history_per_item: int = HISTORY_PER_ITEM,
    ) -> PostgresStore:
        """The merchant's store on the shared pool (which it does not close)."""
        await self.prepare(merchant)
        return PostgresStore(
            self.pool,
            merchant=merchant,
            fence=fence,
            location=self.location,
            health=health or self.health,
            history_per_item=history_per_item,
        )

    async def close(self) -> None:
        await self.pool.close()
