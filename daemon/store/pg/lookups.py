"""The durable look-up queue: webhooks taken by any replica, looked up by the leader.

keyCRM's webhook is only a trigger ("these SKUs changed"); the look-up is the truth. Any replica,
standby or leader, accepts the webhook and `enqueue`s its SKUs in one transaction that also
NOTIFYs the leader, so a webhook is answered 2xx only once its SKUs are on disk: a crash of
either replica loses nothing. The leader `claim`s a batch, looks it up, and marks it `done` once
the result is stored, so an entry leaves the queue only after its answer is on disk (a crash in
between costs one more look-up, never a lost one).

A SKU enqueued again while its look-up is in flight gets a new `seq` and is claimable again:
the look-up in flight may have read the stock before the change, so `done` deletes an entry only
if its `seq` is still the one claimed. Entries claimed under an earlier epoch (a leader that died
holding them) are claimable again at once by the next leader. Claims and deletions are fenced by
the lease: a stale leader can neither hide entries from the new one nor drop them.

NOTIFY is a hint, the table is the truth: the leader also polls, so a notification lost (a
reconnect, a transaction-mode pooler that drops LISTEN) only delays a look-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import TaskStatus
from psycopg import AsyncConnection
from psycopg import Error as PsycopgError
from psycopg.rows import TupleRow

from daemon.store.pg.connect import connect
from daemon.store.pg.lease import RELEASED, Lease, fence

__all__ = ["CHANNEL", "Claimed", "Wakeup", "claim", "depth", "done", "enqueue", "unclaim"]

log = structlog.get_logger("stocksync.lookups")

#: The NOTIFY channel; the payload is the merchant.
CHANNEL = "stocksync_lookups"


@dataclass(frozen=True, slots=True)
class Claimed:
    """One claimed entry: its SKU, the `seq` that `done` checks, and its age for the lag."""

    sku: str
    seq: int
    queued_at: float  # epoch seconds, database clock


async def enqueue(conn: AsyncConnection[TupleRow], merchant: str, skus: Sequence[str]) -> int:
    """Queue SKUs for a look-up (any replica); returns how many. Wakes the leader on commit."""
    unique = list(dict.fromkeys(skus))
    if not unique:
        return 0
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO lookup_queue (merchant, sku, queued_at)"
            " SELECT %s, sku, clock_timestamp() FROM unnest(%s::text[]) AS sku"
            " ON CONFLICT (merchant, sku)"
            " DO UPDATE SET seq = nextval('lookup_queue_seq'), claimed_at = NULL,"
            " claimed_epoch = NULL",
            (merchant, unique),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, merchant))
    return len(unique)


async def claim(
    conn: AsyncConnection[TupleRow], lease: Lease, limit: int = 50, reclaim_after: float = 60.0
) -> list[Claimed]:
    """Up to `limit` entries, oldest first: unclaimed, claimed under an earlier epoch (a leader
    that is gone), or claimed over `reclaim_after` ago (a look-up that hung).

    Raises `LeaseLost` if `lease` moved on.
    """
    async with conn.transaction():
        await fence(conn, lease)
        cursor = await conn.execute(
            "UPDATE lookup_queue q SET claimed_at = clock_timestamp(), claimed_epoch = %(epoch)s"
            " FROM (SELECT sku FROM lookup_queue WHERE merchant = %(merchant)s"
            "       AND (claimed_at IS NULL OR claimed_epoch <> %(epoch)s"
            "            OR claimed_at < clock_timestamp() - make_interval(secs => %(after)s))"
            "       ORDER BY queued_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) pick"
            " WHERE q.merchant = %(merchant)s AND q.sku = pick.sku"
            " RETURNING q.sku, q.seq, extract(epoch FROM q.queued_at)::float8",
            {
                "merchant": lease.merchant,
                "epoch": lease.epoch,
                "after": reclaim_after,
                "limit": limit,
            },
        )
        rows = await cursor.fetchall()
    claimed = [Claimed(sku=str(r[0]), seq=int(r[1]), queued_at=float(r[2])) for r in rows]
    return sorted(claimed, key=lambda c: c.queued_at)


async def done(conn: AsyncConnection[TupleRow], lease: Lease, claimed: Sequence[Claimed]) -> int:
    """Remove looked-up entries not enqueued again since their claim; returns how many.

    Call it once the look-up's result is stored. Raises `LeaseLost`.
    """
    async with conn.transaction():
        await fence(conn, lease)
        cursor = await conn.execute(
            "DELETE FROM lookup_queue WHERE merchant = %s"
            " AND (sku, seq) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
            (lease.merchant, [c.sku for c in claimed], [c.seq for c in claimed]),
        )
        return cursor.rowcount


async def unclaim(
    conn: AsyncConnection[TupleRow], lease: Lease, claimed: Sequence[Claimed]
) -> None:
    """A look-up failed: its entries are claimable again at once. Raises `LeaseLost`."""
    async with conn.transaction():
        await fence(conn, lease)
        await conn.execute(
            "UPDATE lookup_queue SET claimed_at = NULL, claimed_epoch = NULL WHERE merchant = %s"
            " AND (sku, seq) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
            (lease.merchant, [c.sku for c in claimed], [c.seq for c in claimed]),
        )


async def depth(conn: AsyncConnection[TupleRow], merchant: str) -> tuple[int, float]:
    """Entries waiting (claimed ones included) and the age in seconds of the oldest (0: none)."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT count(*),"
            " coalesce(extract(epoch FROM clock_timestamp() - min(queued_at)), 0)::float8"
            " FROM lookup_queue WHERE merchant = %s",
            (merchant,),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


class Wakeup:
    """LISTENs on its own connection for every merchant this replica serves: wakes the leader
    of a merchant whose queue grows, and tells a standby (`on_released(merchant)`) when a
    merchant's leader released its lease. One connection for all merchants, however many.

    It needs a real session: point `dsn` past a transaction-mode pooler (the leader polls the
    queue anyway, so without notifications look-ups only wait for the next poll).
    """

    def __init__(
        self,
        dsn: str,
        merchants: str | Iterable[str] = (),
        *,
        password: str | None = None,
        retry: float = 1.0,
        on_released: Callable[[str], None] | None = None,
    ) -> None:
        self.dsn = dsn
        #: called with the merchant whose leader released its lease (a standby should bid now)
        self.on_released = on_released
        self._merchants = {merchants} if isinstance(merchants, str) else set(merchants)
        self._password = password
        self._retry = retry
        self._pending: set[str] = set()  # merchants notified since their last `wait`
        self._events: dict[str, anyio.Event] = {}
        self.connected = False

    def watch(self, merchant: str) -> None:
        """Pass on this merchant's notifications too (a merchant added by a reload)."""
        self._merchants.add(merchant)

    def unwatch(self, merchant: str) -> None:
        """Ignore this merchant's notifications from now on (a merchant removed)."""
        self._merchants.discard(merchant)
        self._pending.discard(merchant)
        self._events.pop(merchant, None)

    def _wake(self, merchant: str) -> None:
        self._pending.add(merchant)
        event = self._events.pop(merchant, None)
        if event is not None:
            event.set()

    def _only(self) -> str:
        if len(self._merchants) != 1:
            raise ValueError("name the merchant: this listener serves several")
        return next(iter(self._merchants))

    async def wait(self, poll: float = math.inf, merchant: str | None = None) -> bool:
        """Until a notification for `merchant` (default: the only one) arrives, or came since
        the last call, at most `poll` seconds. True if notified; False when the caller should
        poll anyway."""
        name = self._only() if merchant is None else merchant
        if name not in self._pending:
            event = self._events.setdefault(name, anyio.Event())
            with anyio.move_on_after(poll):
                await event.wait()
        notified = name in self._pending
        self._pending.discard(name)
        return notified

    async def _dispatch(self, conn: AsyncConnection[TupleRow]) -> None:
        notifies = conn.notifies()
        try:
            async for notify in notifies:
                merchant = notify.payload
                if merchant not in self._merchants:
                    continue
                if notify.channel == RELEASED:
                    if self.on_released is not None:
                        self.on_released(merchant)
                else:
                    self._wake(merchant)
        finally:  # the generator holds the connection's lock: `close` would wait for it
            with anyio.CancelScope(shield=True):
                await notifies.aclose()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting; `started` once the first LISTEN is in place
        (or has failed: the leader polls meanwhile)."""
        started = False
        failing = False  # `lookups.listen_failed` once per outage, not once per retry
        while True:
            try:
                conn = await connect(self.dsn, password=self._password, autocommit=True)
                try:
                    await conn.execute("LISTEN " + CHANNEL)
                    await conn.execute("LISTEN " + RELEASED)
                    self.connected, failing = True, False
                    if started:  # notifications sent while we were away are lost: poll
                        for merchant in list(self._merchants):
                            self._wake(merchant)
                    else:
                        started = True
                        task_status.started()
                    await self._dispatch(conn)
                finally:
                    # Shielded: a cancelled close leaves the session open until the GC finds it.
                    with anyio.CancelScope(shield=True):
                        await conn.close()
            except PsycopgError as exc:
                if not failing:
                    log.warning("lookups.listen_failed", error=type(exc).__name__)
                failing = True
            self.connected = False
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(self._retry)
