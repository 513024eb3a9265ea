"""Replicas on one database: one leads, webhooks taken by any reach the leader, failover."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from daemon.keycrm.budget import RequestBudget
from daemon.replicas.replica import Replica
from daemon.store.pg.lease import Lease
from tests.pg import until

pytestmark = pytest.mark.anyio

M = "acme"
TTL = 0.9


class Running:
    """A replica with its keeper, listener and leader work running, each stoppable alone."""

    def __init__(self, replica: Replica, handle: Callable[[list[str]], object]) -> None:
        self.replica = replica
        self.handle = handle
        self.scope = anyio.CancelScope()

    async def _lead(self, lease: Lease) -> None:
        async def handle(skus: list[str]) -> None:
            await self.handle(skus)  # type: ignore[misc]

        await self.replica.consume_lookups(lease, handle)

    async def serve(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                await tg.start(self.replica.run)
                tg.start_soon(self.replica.keeper.lead, self._lead)


@pytest.fixture
async def replicas(pg_dsn: str) -> AsyncIterator[list[Replica]]:
    opened = [await Replica.open(pg_dsn, M, ttl=TTL, holder=name, max_size=4) for name in "abc"]
    for replica in opened:
        replica.poll = 0.1
    try:
        yield opened
    finally:
        for replica in opened:
            await replica.pool.close()


async def leader_of(group: list[Running]) -> Running | None:
    leading = [r for r in group if r.replica.keeper.leading()]
    assert len(leading) <= 1
    return leading[0] if leading else None


async def test_webhooks_taken_by_any_replica_are_looked_up_by_the_leader(
    replicas: list[Replica],
) -> None:
    handled: list[tuple[str, str]] = []

    def handler(name: str) -> Callable[[list[str]], object]:
        async def handle(skus: list[str]) -> None:
            handled.extend((name, sku) for sku in skus)

        return handle

    group = [Running(r, handler(r.keeper.holder)) for r in replicas]
    async with anyio.create_task_group() as tg:
        for running in group:
            tg.start_soon(running.serve)
        leader = await until(lambda: leader_of(group), timeout=5)
        standbys = [r for r in group if r is not leader]
        await standbys[0].replica.enqueue(M, ["A", "B"])
        await standbys[1].replica.enqueue(M, ["C"])
        await leader.replica.enqueue(M, ["D"])

        async def all_handled() -> bool | None:
            return True if len(handled) == 4 else None

        await until(all_handled, timeout=5)
        assert {name for name, _ in handled} == {leader.replica.keeper.holder}
        assert sorted(sku for _, sku in handled) == ["A", "B", "C", "D"]

        async def queue_empty() -> bool | None:  # `done` follows the last `handle` shortly
            return True if (await standbys[0].replica.status(M))["lookups_queued"] == 0 else None

        await until(queue_empty, timeout=5)
        status = await standbys[0].replica.status(M)
        assert status["role"] == "standby" and status["leader"] == leader.replica.keeper.holder
        assert (await leader.replica.status(M))["role"] == "leader"
        tg.cancel_scope.cancel()


async def test_a_lookup_the_dead_leader_held_is_done_by_the_next_one(
    replicas: list[Replica],
) -> None:
    stuck = anyio.Event()
    handled: list[str] = []

    async def hang(skus: list[str]) -> None:
        stuck.set()
        await anyio.sleep_forever()

    async def handle(skus: list[str]) -> None:
        handled.extend(skus)

    group = [Running(replicas[0], hang), Running(replicas[1], handle)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(group[0].serve)
        await until(lambda: leader_of(group), timeout=5)
        tg.start_soon(group[1].serve)
        await replicas[1].enqueue(M, ["A"])
        await stuck.wait()  # the leader claimed it and hangs in the look-up
        died = time.monotonic()
        group[0].scope.cancel()  # SIGKILL, as far as the database can tell: no release

        async def done() -> bool | None:
            return True if handled == ["A"] else None

        await until(done, timeout=5)
        assert time.monotonic() - died < TTL + 5.0  # not after reclaim_after (60 s)
        tg.cancel_scope.cancel()


async def test_a_graceful_stop_hands_the_lease_over_at_once(pg_dsn: str) -> None:
    async def nothing(skus: list[str]) -> None:
        return None

    ttl = 6.0  # long: neither the TTL nor the standby's next bid (ttl/3) can explain a quick one
    replicas = [await Replica.open(pg_dsn, M, ttl=ttl, holder=h, max_size=2) for h in "ab"]
    group = [Running(r, nothing) for r in replicas]
    async with anyio.create_task_group() as tg:
        tg.start_soon(group[0].serve)
        await until(lambda: leader_of(group), timeout=5)
        tg.start_soon(group[1].serve)
        first = group[0]
        first_epoch = first.replica.keeper.lease().epoch  # type: ignore[union-attr]
        first.scope.cancel()
        await first.replica.leave()
        stopped = time.monotonic()

        async def second_leads() -> bool | None:
            return True if group[1].replica.keeper.leading() else None

        await until(second_leads, timeout=5)
        assert time.monotonic() - stopped < 1.0  # told by NOTIFY, it bids at once
        assert group[1].replica.keeper.lease().epoch == first_epoch + 1  # type: ignore[union-attr]
        tg.cancel_scope.cancel()
    for replica in replicas:
        await replica.pool.close()


async def test_a_failed_lookup_goes_back_to_the_queue(replicas: list[Replica]) -> None:
    replica = replicas[0]
    async with anyio.create_task_group() as tg:
        await tg.start(replica.run)
        lease = replica.keeper.lease()
        assert lease is not None
        await replica.enqueue(M, ["A"])

        async def fail(skus: list[str]) -> None:
            raise RuntimeError("keyCRM is down")

        with pytest.raises(RuntimeError, match="keyCRM is down"):
            await replica.consume_lookups(lease, fail)
        seen: list[str] = []
        with anyio.CancelScope() as scope:

            async def handle(skus: list[str]) -> None:
                seen.extend(skus)
                scope.cancel()  # one batch is enough

            await replica.consume_lookups(lease, handle)
        assert seen == ["A"]
        tg.cancel_scope.cancel()


async def test_a_new_leader_inherits_its_predecessors_keycrm_window(
    replicas: list[Replica],
) -> None:
    for _ in range(3):
        await replicas[0].record_request(M)
    budget = RequestBudget(limit=60, window=60.0)
    assert await replicas[1].inherit_budget(M, budget) == 3
    assert budget.sent_in_window() == 3
