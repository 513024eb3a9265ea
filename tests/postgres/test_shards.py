"""Merchants sharded over replicas on one database: fair shares, failover, handover, reloads.

Each replica runs a stand-in for its merchants' pipelines: work that lasts until it is drained.
A monitor checks, all along, that no merchant ever has two replicas whose lease is valid.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest

from daemon.replicas.leader import LeaseKeeper
from daemon.replicas.replica import Replica
from daemon.store.pg.connect import Pool
from daemon.store.pg.lease import Lease
from daemon.store.pg.lease import read as read_lease
from tests.pg import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

TTL = 3.0
SIX = [f"shop-{i}" for i in range(6)]


class Node:
    """A replica serving its merchants until cancelled (`kill`: no release, no leave)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.scope = anyio.CancelScope()
        self.drained: list[str] = []
        self.running: set[str] = set()  # merchants whose work runs here
        self._stops: dict[str, anyio.Event] = {}

    async def _work(self, lease: Lease) -> None:
        stop = self._stops[lease.merchant] = anyio.Event()
        self.running.add(lease.merchant)
        try:
            await stop.wait()  # a pipeline: runs until asked to drain
        finally:
            self.running.discard(lease.merchant)

    def _drain(self, merchant: str) -> None:
        self.drained.append(merchant)
        self._stops[merchant].set()

    async def serve(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                await tg.start(self.replica.run)
                tg.start_soon(self.replica.lead, self._work, self._drain)

    def kill(self) -> None:
        self.scope.cancel()


class Cluster:
    def __init__(self, dsn: str, tg: anyio.abc.TaskGroup) -> None:
        self.dsn = dsn
        self.tg = tg
        self.nodes: dict[str, Node] = {}
        self.overlaps: list[tuple[str, list[str]]] = []

    async def start(self, name: str, merchants: list[str]) -> Node:
        replica = await Replica.open(self.dsn, merchants, ttl=TTL, holder=name, max_size=4)
        node = self.nodes[name] = Node(replica)
        self.tg.start_soon(node.serve)
        return node

    def leaders(self, merchant: str) -> list[str]:
        return [
            name
            for name, node in self.nodes.items()
            if (keeper := node.replica.keepers.get(merchant)) is not None and keeper.leading()
        ]

    def shares(self, names: list[str]) -> list[int] | None:
        """Merchants led per named replica, once every merchant has exactly one leader and
        its work runs there."""
        merchants = set().union(*(n.replica.keepers for n in self.nodes.values()))
        owners = [self.leaders(m) for m in merchants]
        if any(len(o) != 1 for o in owners):
            return None
        if any(m not in self.nodes[o[0]].running for m, o in zip(merchants, owners, strict=True)):
            return None
        counts = Counter(o[0] for o in owners)
        return sorted(counts.get(name, 0) for name in names)

    async def monitor(self) -> None:
        """Never two valid leases for one merchant, at any moment we can look."""
        while True:
            merchants = set().union(*(n.replica.keepers for n in self.nodes.values()))
            for merchant in merchants:
                if len(leaders := self.leaders(merchant)) > 1:
                    self.overlaps.append((merchant, leaders))
            await anyio.sleep(0.005)

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.replica.pool.close()


@pytest.fixture
async def cluster(pg_dsn: str) -> AsyncIterator[Cluster]:
    async with anyio.create_task_group() as tg:
        group = Cluster(pg_dsn, tg)
        tg.start_soon(group.monitor)
        try:
            yield group
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await group.close()
    assert group.overlaps == []


async def settled(cluster: Cluster, names: list[str], want: list[int], timeout: float) -> float:
    """Seconds until the named replicas lead `want` merchants each (sorted)."""
    started = time.monotonic()

    async def check() -> bool | None:
        return True if cluster.shares(names) == want else None

    await until(check, timeout=timeout)
    return time.monotonic() - started


async def test_replicas_share_merchants_evenly_hand_over_on_a_join_and_take_over_a_dead_ones(
    cluster: Cluster,
) -> None:
    a = await cluster.start("a", SIX)
    await settled(cluster, ["a"], [6], timeout=5)  # alone, it leads all six at once
    await cluster.start("b", SIX)
    await settled(cluster, ["a", "b"], [3, 3], timeout=2 * TTL)
    assert a.drained  # a handed merchants over by draining them, not by losing them
    c = await cluster.start("c", SIX)
    joined = await settled(cluster, ["a", "b", "c"], [2, 2, 2], timeout=2 * TTL + 2)
    assert joined < 2 * TTL
    assert {m for m in SIX if cluster.leaders(m) == ["c"]} == {
        m for m in SIX if a.replica.owner(m) == "c"
    }
    orphans = [m for m in SIX if cluster.leaders(m) == ["c"]]
    c.kill()  # SIGKILL as far as the database can tell: no release, no leave
    del cluster.nodes["c"]  # its last leases stay valid on its own clock: not a leader any more
    taken = await settled(cluster, ["a", "b"], [3, 3], timeout=TTL + 5)
    assert taken < TTL + 5
    assert all(len(cluster.leaders(m)) == 1 for m in orphans)
    await c.replica.pool.close()


async def test_a_reload_starts_an_added_merchant_and_hands_a_removed_one_back(
    cluster: Cluster,
) -> None:
    four = SIX[:4]
    a = await cluster.start("a", four)
    b = await cluster.start("b", four)
    await settled(cluster, ["a", "b"], [2, 2], timeout=2 * TTL)
    gone = four[0]
    (holder,) = cluster.leaders(gone)
    led_by = cluster.nodes[holder]
    after = [*four[1:], "shop-new"]
    await a.replica.set_merchants(after)
    await b.replica.set_merchants(after)
    assert gone in led_by.drained  # drained, then released
    assert gone not in a.replica.keepers and gone not in b.replica.keepers
    async with a.replica.pool.connection() as conn:
        lease = await read_lease(conn, gone)
    assert lease is not None and lease.expires_in <= 0  # nobody leads it any more
    await settled(cluster, ["a", "b"], [2, 2], timeout=2 * TTL)
    assert len(cluster.leaders("shop-new")) == 1
    status = await a.replica.status("shop-new")
    assert status["leader"] == cluster.leaders("shop-new")[0]
    assert status["assigned_to"] == status["leader"]
    assert a.replica.leading() | b.replica.leading() == set(after)
    assert a.replica.standby() == set(after) - a.replica.leading()


async def test_a_merchant_given_to_another_replica_is_led_here_once_unled_for_a_ttl(
    pool: Pool,
) -> None:
    now = [0.0]
    keeper = LeaseKeeper(pool, "orphan", "a", ttl=10.0, clock=lambda: now[0], wanted=lambda: False)
    assert await keeper.step() is None  # another replica's: no bid while it may still take it
    now[0] = 9.5
    assert await keeper.step() is None
    now[0] = 10.5  # nobody took it for a TTL (replicas disagree, or its owner cannot)
    lease = await keeper.step()
    assert lease is not None and keeper.leading()
