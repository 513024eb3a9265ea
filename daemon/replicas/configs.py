"""Which config each replica runs, which one is newer, and whether ours is the leader's.

Replicas of one merchant may run different configs for a while (a rolling update that adds a
channel) or for good (a host left behind). Each replica publishes its config's fingerprint
(`daemon.config.fingerprint`: what is pushed where, never a secret) with every lease step:

- **Generations.** The first time a fingerprint is published for a merchant it gets the next
  generation (one higher than any before it), and keeps it for good. "Newer" means a higher
  generation: the config deployed later. A replica restarted with the config it had keeps its
  place, so a crash loop of an old pod in the middle of a rolling update cannot turn it back.
- **Heartbeats.** `replica_configs` holds each replica's fingerprint and when it last said so;
  a replica is *live* while that is within `lease_ttl`. A graceful stop deletes its row.
- **The rule.** A replica whose generation is lower than the newest live replica's never bids
  for the lease, and a leader in that position hands its lease over: a rolling update converges
  on the new config as soon as its first replica runs, and never back while one of them lives.
  A rollback (the old config deployed again) keeps its old, lower generation, so the newer
  replicas lead until the last of them stops; then the old config's replicas are the newest
  live ones and lead. No deadlock either way: standbys that differ stay ready (the Kubernetes
  rollout waits for readiness with `maxUnavailable: 0`).

Everything here is ordinary rows and transaction-scoped locks, safe behind a pooler.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

__all__ = ["ConfigView", "beat", "forget"]

#: rows of replicas not heard from for this long are dropped (a restart gets a new holder name)
_FORGET_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class ConfigView:
    """This replica's config as the database sees it, beside the leader's and the newest."""

    fingerprint: str
    generation: int
    #: the highest generation among live replicas, this one included
    newest: int
    #: the current leader's fingerprint and generation (None: nobody leads, or the leader
    #: publishes none, being of a version before fingerprints)
    leader_fingerprint: str | None = None
    leader_generation: int | None = None
    #: the live replicas that run the newest generation (the only ones that will bid)
    newest_holders: tuple[str, ...] = ()

    @property
    def outranked(self) -> bool:
        """A live replica runs a newer config: this one must not lead."""
        return self.newest > self.generation

    @property
    def differs(self) -> bool:
        """The leader runs another config than this replica."""
        return self.leader_fingerprint is not None and self.leader_fingerprint != self.fingerprint


async def _generation(conn: AsyncConnection[TupleRow], merchant: str, fingerprint: str) -> int:
    """The fingerprint's generation, given now (the next one) if it has none yet."""
    select = "SELECT generation FROM config_generations WHERE merchant = %s AND fingerprint = %s"
    cursor = await conn.execute(select, (merchant, fingerprint))
    row = await cursor.fetchone()
    if row is None:
        # Two replicas publishing two new configs at once must not take the same number.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('stocksync.config.' || %s, 0))",
            (merchant,),
        )
        await conn.execute(
            "INSERT INTO config_generations (merchant, fingerprint, generation)"
            " SELECT %(m)s, %(f)s, COALESCE(max(generation), 0) + 1"
            " FROM config_generations WHERE merchant = %(m)s"
            " ON CONFLICT (merchant, fingerprint) DO NOTHING",
            {"m": merchant, "f": fingerprint},
        )
        cursor = await conn.execute(select, (merchant, fingerprint))
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def beat(
    conn: AsyncConnection[TupleRow], merchant: str, holder: str, fingerprint: str, ttl: float
) -> ConfigView:
    """Say that `holder` is live and runs `fingerprint`; return how that compares."""
    async with conn.transaction():
        generation = await _generation(conn, merchant, fingerprint)
        await conn.execute(
            "INSERT INTO replica_configs (merchant, holder, fingerprint, seen_at)"
            " VALUES (%s, %s, %s, clock_timestamp())"
            " ON CONFLICT (merchant, holder) DO UPDATE"
            " SET fingerprint = excluded.fingerprint, seen_at = excluded.seen_at",
            (merchant, holder, fingerprint),
        )
        await conn.execute(
            "DELETE FROM replica_configs WHERE merchant = %s"
            " AND seen_at < clock_timestamp() - make_interval(secs => %s)",
            (merchant, _FORGET_AFTER),
        )
        cursor = await conn.execute(
            "SELECT r.holder, g.generation FROM replica_configs r"
            " JOIN config_generations g USING (merchant, fingerprint)"
            " WHERE r.merchant = %s AND r.seen_at > clock_timestamp() - make_interval(secs => %s)",
            (merchant, ttl),
        )
        live = {str(row[0]): int(row[1]) for row in await cursor.fetchall()}
        live[holder] = generation
        newest = max(live.values())
        cursor = await conn.execute(
            "SELECT r.fingerprint, g.generation FROM leases l"
            " JOIN replica_configs r ON r.merchant = l.merchant AND r.holder = l.holder"
            " JOIN config_generations g"
            " ON g.merchant = r.merchant AND g.fingerprint = r.fingerprint"
            " WHERE l.merchant = %s AND l.expires_at > clock_timestamp()",
            (merchant,),
        )
        leader = await cursor.fetchone()
    return ConfigView(
        fingerprint=fingerprint,
        generation=generation,
        newest=newest,
        leader_fingerprint=None if leader is None else str(leader[0]),
        leader_generation=None if leader is None else int(leader[1]),
        newest_holders=tuple(sorted(h for h, g in live.items() if g == newest)),
    )


async def forget(conn: AsyncConnection[TupleRow], merchant: str, holder: str) -> None:
    """A graceful stop: this replica is no longer live (an older config may lead at once)."""
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM replica_configs WHERE merchant = %s AND holder = %s", (merchant, holder)
        )
