"""The leader lease: one holder per merchant, and an epoch that fences every write of the leader.

A row of `leases` per merchant says who leads (`holder`), until when (`expires_at`, on the
database's clock, so replicas' clocks never need to agree) and under which `epoch`. Each
acquisition bumps the epoch; renewals keep it. Two guards make a leader that lost its lease
harmless:

- **On its own clock.** A `Lease` is valid until the holder's monotonic clock passes the moment
  it *sent* the statement that took or renewed it, plus the TTL, minus a safety margin. The
  database counts the TTL from a later moment, so a holder always gives up first, even after a
  pause (GC, SIGSTOP, a frozen VM) it cannot notice: the pushes to channels, which no database
  can fence, are checked against this.
- **In the database.** Every write of the leader runs `fence` first in its transaction (or puts
  `FENCE` in its WHERE clause): the row must still carry this holder and epoch and be unexpired.
  The fence takes a `FOR KEY SHARE` lock on the lease row, and an acquisition takes `FOR UPDATE`
  on it, so a takeover waits for the old leader's in-flight transactions to end, and every
  transaction after it sees the new epoch and is refused. Renewals touch no key column, so they
  do not wait for the leader's own writes.

No session advisory lock anywhere: it would leak through a pooler and die with a pooled
connection. Everything here is ordinary rows and transaction-scoped locks.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import LiteralString

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow

from daemon.core.errors import StateError

__all__ = [
    "FENCE",
    "FENCE_OR_READ_ONLY",
    "RELEASED",
    "Lease",
    "LeaseInfo",
    "LeaseLost",
    "acquire",
    "default_margin",
    "fence",
    "fence_held",
    "fence_params",
    "fence_sent",
    "lost",
    "make_holder",
    "read",
    "release",
    "renew",
]


#: The NOTIFY channel of a released lease; the payload is the merchant.
RELEASED = "stocksync_lease_released"


class LeaseLost(StateError):
    """This replica no longer holds the merchant's lease: stop leading and write nothing."""


def default_margin(ttl: float) -> float:
    """How much earlier than the database a holder gives up: a fifth of the TTL.

    It covers clock-rate drift between the holder and the database and the time between our
    last check and a request reaching a channel.
    """
    return ttl / 5


def make_holder() -> str:
    """A name for this process that no other process, here or on a restarted pod, shares."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease this process holds; `started` is on its own monotonic clock."""

    merchant: str
    holder: str
    epoch: int
    ttl: float
    margin: float
    #: when the statement that took or last renewed the lease was sent (holder's monotonic clock)
    started: float

    @property
    def deadline(self) -> float:
        """The holder's monotonic time after which it must act as if it had lost the lease."""
        return self.started + self.ttl - self.margin

    def valid(self, now: float) -> bool:
        """Whether the holder may still lead (push) at monotonic time `now`."""
        return now < self.deadline


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """Who leads a merchant, as any replica reads it (for `/status` and the metrics)."""

    holder: str
    epoch: int
    #: seconds until it expires on the database's clock; negative once it has
    expires_in: float


#: A condition for a leader's single-statement write: true while `lease` is current. Bind it
#: with `fence_params(lease)`; a statement whose condition is false writes nothing.
FENCE: LiteralString = """EXISTS (
    SELECT 1 FROM leases
    WHERE merchant = %(lease_merchant)s AND holder = %(lease_holder)s
      AND epoch = %(lease_epoch)s AND expires_at > clock_timestamp()
    FOR KEY SHARE)"""


def fence_params(lease: Lease) -> dict[str, object]:
    """The parameters `FENCE` names."""
    return {"lease_merchant": lease.merchant, "lease_holder": lease.holder,
            "lease_epoch": lease.epoch}  # fmt: skip


async def limit_idle(conn: AsyncConnection[TupleRow], ttl: float) -> None:
    """This transaction's session is ended by the server if it sits idle in it for a third of
    the TTL: a frozen process must not keep the lease row locked (`SET LOCAL`: pooler-safe)."""
    idle = f"{max(1000, int(ttl * 1000 / 3))}ms"
    await conn.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', %s, true)", (idle,)
    )


async def fence(conn: AsyncConnection[TupleRow], lease: Lease) -> None:
    """First statement of a leader's write transaction: raises `LeaseLost` if it moved on.

    The lock it takes lasts until the caller's transaction ends, so no takeover can happen
    between this check and the caller's commit. A leader frozen inside that transaction (a
    SIGSTOP, a paused VM) would hold the lock forever and block every takeover, so the server
    ends such a session after a third of the TTL idle in the transaction (`SET LOCAL`: scoped
    to this transaction, safe behind a pooler).
    """
    await limit_idle(conn, lease.ttl)
    cursor = await conn.execute("SELECT " + FENCE, fence_params(lease))
    row = await cursor.fetchone()
    if row is None or not row[0]:
        raise lost(lease)


#: `FENCE` for a pipelined transaction (`fence_sent`): true while the lease is ours; otherwise
#: false, and the transaction it runs in is made read-only, so nothing after it can write.
FENCE_OR_READ_ONLY: LiteralString = (
    "SELECT CASE WHEN " + FENCE + " THEN true"
    " ELSE set_config('transaction_read_only', 'on', true) IS NULL END"
)


async def fence_sent(conn: AsyncConnection[TupleRow], lease: Lease) -> AsyncCursor[TupleRow]:
    """`fence` for a transaction in pipeline mode, whose statements go to the server without
    waiting for each other's answers (and whose commit may go with them).

    Sent first in the transaction, like `fence`, with the same lock. When the lease moved on it
    makes its own transaction read-only instead of raising: every write after it fails on the
    server (`ReadOnlySqlTransaction`), so the commit writes nothing, whenever the answer is
    read. Read it with `fence_held` once the pipeline has synced.
    """
    await limit_idle(conn, lease.ttl)
    return await conn.execute(FENCE_OR_READ_ONLY, fence_params(lease))


async def fence_held(cursor: AsyncCursor[TupleRow]) -> bool | None:
    """What the fence `fence_sent` sent found: True (the lease was ours, the transaction could
    write), False (it had moved on: nothing was written), None (no answer came: the
    transaction failed before it)."""
    if cursor.pgresult is None:
        return None
    row = await cursor.fetchone()
    return None if row is None else bool(row[0])


def lost(lease: Lease) -> LeaseLost:
    """The error of a fenced write that found the lease moved on."""
    return LeaseLost(f"the lease of {lease.merchant} moved on from epoch {lease.epoch}")


async def acquire(
    conn: AsyncConnection[TupleRow],
    merchant: str,
    holder: str,
    ttl: float,
    *,
    margin: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Lease | None:
    """Take the merchant's lease if nobody holds it (or it expired), with a new epoch.

    Returns None while it is held, by anyone, this holder included (use `renew` for that).
    """
    started = clock()
    async with conn.transaction():
        await limit_idle(conn, ttl)
        await conn.execute(
            "INSERT INTO leases (merchant, holder, epoch, expires_at, acquired_at)"
            " VALUES (%s, '', 0, '-infinity', '-infinity') ON CONFLICT (merchant) DO NOTHING",
            (merchant,),
        )
        # An expired lease whose row is still locked belongs to a leader frozen inside a
        # transaction (SIGSTOP, a paused VM): end its sessions, or it would block every
        # takeover for as long as it stays frozen. Same role: no superuser needed.
        cursor = await conn.execute(
            "SELECT expires_at <= clock_timestamp() FROM leases WHERE merchant = %s", (merchant,)
        )
        expired = await cursor.fetchone()
        if expired is not None and expired[0]:
            # Only sessions stuck for longer than a live transaction ever takes (idle in it,
            # or an answer its frozen client never reads): one that is merely slow is waited
            # for, as below.
            await conn.execute(
                "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a"
                " JOIN pg_locks l ON l.pid = a.pid"
                " WHERE l.relation = 'leases'::regclass AND l.granted"
                " AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL"
                " AND clock_timestamp() - a.state_change > make_interval(secs => %s)",
                (ttl / 3,),
            )
        # FOR UPDATE waits for the old leader's fenced transactions (FOR KEY SHARE) to end;
        # not forever: a frozen leader's are ended by the server (see `fence`), and the next
        # bid comes soon anyway.
        await conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", (f"{max(1000, int(ttl * 1000 / 3))}ms",)
        )
        cursor = await conn.execute(
            "SELECT expires_at > clock_timestamp() FROM leases WHERE merchant = %s FOR UPDATE",
            (merchant,),
        )
        row = await cursor.fetchone()
        if row is None or row[0]:
            return None
        cursor = await conn.execute(
            "UPDATE leases SET holder = %s, epoch = epoch + 1,"
            " expires_at = clock_timestamp() + make_interval(secs => %s),"
            " acquired_at = clock_timestamp()"
            " WHERE merchant = %s RETURNING epoch",
            (holder, ttl, merchant),
        )
        row = await cursor.fetchone()
    assert row is not None
    return Lease(
        merchant=merchant,
        holder=holder,
        epoch=int(row[0]),
        ttl=ttl,
        margin=default_margin(ttl) if margin is None else margin,
        started=started,
    )


async def renew(
    conn: AsyncConnection[TupleRow], lease: Lease, *, clock: Callable[[], float] = time.monotonic
) -> Lease | None:
    """Extend a lease still held under its epoch; None if it expired or another took it."""
    started = clock()
    async with conn.transaction():
        await limit_idle(conn, lease.ttl)
        cursor = await conn.execute(
            "UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => %s)"
            " WHERE merchant = %s AND holder = %s AND epoch = %s"
            " AND expires_at > clock_timestamp() RETURNING epoch",
            (lease.ttl, lease.merchant, lease.holder, lease.epoch),
        )
        row = await cursor.fetchone()
    return None if row is None else replace(lease, started=started)


async def release(conn: AsyncConnection[TupleRow], lease: Lease) -> None:
    """Give the lease up now (a graceful stop), and NOTIFY `RELEASED` so standbys bid at once."""
    async with conn.transaction():
        await limit_idle(conn, lease.ttl)
        await conn.execute(
            "UPDATE leases SET expires_at = clock_timestamp()"
            " WHERE merchant = %s AND holder = %s AND epoch = %s",
            (lease.merchant, lease.holder, lease.epoch),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (RELEASED, lease.merchant))


async def read(conn: AsyncConnection[TupleRow], merchant: str) -> LeaseInfo | None:
    """The merchant's lease as the database has it; None if nobody ever held it."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT holder, epoch, extract(epoch FROM expires_at - clock_timestamp())::float8"
            " FROM leases WHERE merchant = %s AND holder <> ''",
            (merchant,),
        )
        row = await cursor.fetchone()
    if row is None:
        return None
    return LeaseInfo(holder=str(row[0]), epoch=int(row[1]), expires_in=float(row[2]))
