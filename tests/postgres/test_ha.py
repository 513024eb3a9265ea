"""High availability, end to end: several `stocksync run` processes on one PostgreSQL database.

Exactly one leads; the standbys answer /readyz, take webhooks into the durable queue, and say
who leads. A SIGKILLed leader is replaced within the lease's TTL and nothing is lost, webhooks
posted to the standby and to the dying leader included. A leader paused past its lease
(SIGSTOP) pushes nothing when it wakes: the fake channel knows each replica by its own token.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import anyio
import anyio.abc
import orjson
import pytest

from bench.pgserver import state_url as url_dsn
from tests.conftest import World, eventually
from tests.integration.test_lifecycle import free_port
from tests.integration.test_sync import in_sync

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TTL = 3.0


class Replicas:
    """Replica processes of one deployment, each with its own port, token and log."""

    def __init__(self, world: World, dsn: str) -> None:
        self.world = world
        self.dsn = url_dsn(dsn)
        self.ports: dict[str, int] = {}
        self.tokens: dict[str, str] = {}
        self.processes: dict[str, anyio.abc.Process] = {}

    async def start(
        self, name: str, *, rate: str = "1000/s", channels: str | None = None, **config: str
    ) -> None:
        """`config`: more of `World.write_config`'s keywords (`keycrm`, `order_feed`)."""
        port = free_port()
        self.ports[name] = port
        self.tokens[name] = f"{name}-token"
        self.world.shops["pos"].also_accept.add(self.tokens[name])
        path = self.world.write_config(
            listen=f"127.0.0.1:{port}",
            daemon=f'lease_ttl = "{TTL:g}s"',
            channels=channels,
            **config,  # type: ignore[arg-type]
        )
        text = (
            path.read_text()
            .replace(f'state = "{self.world.tmp_path / "state.db"}"', f'state = "{self.dsn}"')
            .replace('rate_limit = "1000/s"', f'rate_limit = "{rate}"')
        )
        config = self.world.tmp_path / f"{name}.toml"
        config.write_text(text)
        env = {**os.environ, "T_TOKEN_POS": self.tokens[name]}
        with (self.world.tmp_path / f"{name}.log").open("ab") as log:
            self.processes[name] = await anyio.open_process(
                [sys.executable, "-m", "daemon", "run", "-c", str(config)],
                stdout=log,
                stderr=log,
                env=env,
            )

    async def status(self, name: str) -> dict[str, object] | None:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.ports[name]}/status") as answer,
            ):
                data: dict[str, object] = orjson.loads(await answer.read())
                return data
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def role(self, name: str) -> str | None:
        status = await self.status(name)
        replica = None if status is None else status.get("replica")
        return replica.get("role") if isinstance(replica, dict) else None  # type: ignore[no-any-return]

    async def leader(self) -> str | None:
        roles = {name: await self.role(name) for name in self.processes}
        leaders = [name for name, role in roles.items() if role == "leader"]
        assert len(leaders) <= 1, f"two leaders at once: {roles}"
        return leaders[0] if leaders else None

    async def webhook(self, name: str, skus: list[str]) -> int:
        body = orjson.dumps([{"sku": sku} for sku in skus])
        url = f"http://127.0.0.1:{self.ports[name]}/webhooks/keycrm/{self.world.webhook_token}"
        async with aiohttp.ClientSession() as session, session.post(url, data=body) as answer:
            return answer.status

    def pushes_by(self, name: str, since: float = 0.0) -> int:
        token = self.tokens[name]
        return sum(1 for at, who in self.world.shops["pos"].senders if who == token and at > since)

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in self.processes.values():
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.fixture
async def replicas(world: World, pg_dsn: str) -> AsyncIterator[Replicas]:
    world.keycrm.populate(30)
    await world.add_shop("pos")
    group = Replicas(world, pg_dsn)
    try:
        yield group
    finally:
        with anyio.CancelScope(shield=True):
            await group.stop()


async def leader_elected(replicas: Replicas) -> str:
    found: list[str] = []

    async def one() -> bool:
        name = await replicas.leader()
        if name is not None:
            found[:] = [name]
        return name is not None

    await eventually(one, timeout=20)
    return found[0]


def restock(world: World, skus: list[str], quantity: float) -> None:
    for sku in skus:
        world.keycrm.set_stock(sku, quantity)


async def test_one_leads_a_killed_leader_is_replaced_and_nothing_is_lost(
    world: World, replicas: Replicas
) -> None:
    for name in ("a", "b", "c"):
        await replicas.start(name)
    await eventually(lambda: in_sync(world), timeout=30)

    async def all_answer() -> bool:
        return all([await replicas.status(name) is not None for name in replicas.processes])

    await eventually(all_answer, timeout=20)
    leader = await leader_elected(replicas)
    standbys = [name for name in replicas.processes if name != leader]
    for name in standbys:  # standbys are ready and say who leads
        status = await replicas.status(name)
        assert status is not None and status["ready"] is True
    # Changes reported to a standby, and to the leader just before it dies.
    restock(world, ["SKU-00001", "SKU-00002"], 77)
    assert await replicas.webhook(standbys[0], ["SKU-00001", "SKU-00002"]) == 202
    restock(world, ["SKU-00003"], 55)
    assert await replicas.webhook(leader, ["SKU-00003"]) == 202
    killed_at = time.monotonic()
    replicas.processes[leader].kill()
    await replicas.processes[leader].wait()
    restock(world, ["SKU-00004"], 66)  # and one during the failover, to a standby
    assert await replicas.webhook(standbys[1], ["SKU-00004"]) == 202
    successor = await leader_elected(replicas)
    assert successor != leader
    assert time.monotonic() - killed_at <= TTL + 5
    await eventually(lambda: in_sync(world), timeout=30)
    pos = world.shops["pos"]
    for sku, quantity in (("SKU-00001", 77), ("SKU-00003", 55), ("SKU-00004", 66)):
        barcode = world.keycrm.by_sku(sku).barcode or ""
        assert pos.quantity(barcode, "S1") == quantity - world.keycrm.by_sku(sku).reserve


async def test_a_leader_paused_past_its_lease_pushes_nothing_when_it_wakes(
    world: World, replicas: Replicas
) -> None:
    """Paused with pushes claimed and waiting for their turn (5 a second): on waking, its own
    clock says the lease is over before any of them leaves."""
    await replicas.start("a", rate="5/s")
    await eventually(lambda: in_sync(world), timeout=30)
    assert await leader_elected(replicas) == "a"
    await replicas.start("b", rate="5/s")
    await eventually(lambda: replicas.role("b"), timeout=20)
    skus = [f"SKU-{n:05d}" for n in range(1, 21)]
    restock(world, skus, 88)
    before = replicas.pushes_by("a")
    assert await replicas.webhook("a", skus) == 202
    await eventually(lambda: replicas.pushes_by("a") > before, timeout=20)
    replicas.processes["a"].send_signal(signal.SIGSTOP)  # mid-backlog
    stopped_at = time.monotonic()
    await eventually(lambda: _is_leader(replicas, "b"), timeout=TTL + 10)
    await eventually(lambda: in_sync(world), timeout=30)  # b finished a's backlog
    await anyio.sleep(max(0.0, TTL - (time.monotonic() - stopped_at)))  # a's lease is long over
    woke_at = time.monotonic()
    replicas.processes["a"].send_signal(signal.SIGCONT)
    await eventually(lambda: _role_is(replicas, "a", "standby"), timeout=20)
    restock(world, ["SKU-00021"], 44)  # work after the wake-up goes to the leader only
    assert await replicas.webhook("a", ["SKU-00021"]) == 202
    await eventually(lambda: in_sync(world), timeout=20)
    await anyio.sleep(0.5)
    # It starts nothing after waking. A request it was already sending when it froze (between
    # the lease check and the bytes leaving: a connect, a write) completes as it resumes;
    # nothing in the process can recall it. At most `concurrency` (8) of those.
    late = replicas.pushes_by("a", since=woke_at)
    assert late <= 8, f"{late} pushes by the old leader after it woke"
    assert replicas.pushes_by("b", since=woke_at) >= 1


async def _is_leader(replicas: Replicas, name: str) -> bool:
    return await replicas.role(name) == "leader"


async def _role_is(replicas: Replicas, name: str, role: str) -> bool:
    return await replicas.role(name) == role


def test_url_dsn_keeps_the_socket_folder() -> None:
    assert url_dsn("host=/tmp/pg port=5432 user=postgres dbname=t_1") == (
        "postgresql://postgres@/t_1?host=%2Ftmp%2Fpg&port=5432"
    )
