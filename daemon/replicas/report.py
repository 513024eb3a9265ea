"""What `/status` says about one merchant on this replica: who leads, who should, the queue."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from daemon.config.fingerprint import short
from daemon.replicas.leader import LeaseKeeper
from daemon.store.pg import lookups
from daemon.store.pg.lease import read

__all__ = ["config_differs", "config_status", "merchant_status"]


def config_differs(keeper: LeaseKeeper) -> bool:
    """Our config is not the leader's (as of the last lease step): metric and readiness."""
    view = keeper.config
    return view is not None and view.fingerprint == keeper.fingerprint and view.differs


def config_status(keeper: LeaseKeeper) -> dict[str, Any] | None:
    """Our config and the leader's, by fingerprint (first 12 digits) and generation."""
    view = keeper.config
    if view is None:
        return None
    return {
        "fingerprint": short(view.fingerprint),
        "generation": view.generation,
        "leader_fingerprint": short(view.leader_fingerprint),
        "leader_generation": view.leader_generation,
        "newest_live_generation": view.newest,
        "differs_from_leader": config_differs(keeper),
    }


async def merchant_status(
    conn: AsyncConnection[TupleRow], keeper: LeaseKeeper, owner: str | None
) -> dict[str, Any]:
    """The merchant's lease as the database has it, beside this replica's part in it."""
    lease = keeper.lease()
    info = await read(conn, keeper.merchant)
    waiting, oldest = await lookups.depth(conn, keeper.merchant)
    return {
        "merchant": keeper.merchant,
        "replica": keeper.holder,
        "role": "leader" if lease is not None else "standby",
        "leader": None if info is None or info.expires_in <= 0 else info.holder,
        "epoch": None if info is None else info.epoch,
        #: the replica the share-out gives it to, as this one sees it
        "assigned_to": owner,
        "handing_over": keeper.handing_over(),
        "lookups_queued": waiting,
        "lookups_oldest_seconds": round(oldest, 3),
        "config": config_status(keeper),
    }
