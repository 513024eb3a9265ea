"""Failover on PostgreSQL: three `stocksync run` replicas on one database, the leader SIGKILLed
under change traffic, timed from the kill to the first push the channel receives from the new
leader. Twice: the new leader is killed in its turn, so the last replica takes over.

Each replica pushes to the fake Inventory Update API with its own token, so the fake knows who
sent each request (`senders`). A driver changes stock in the fake keyCRM and posts keyCRM's
webhook to the live replicas in turn, leader and standbys alike, the whole time; debounce is 0 s,
so the first push after a failover waits for nothing but the lease. At the end the channel must
hold what keyCRM says for every SKU: a change lost in a failover fails the benchmark.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import anyio
import orjson

from bench.options import Options
from bench.pgserver import DURABLE, NO_BINARIES, find_bindir, running_server, state_url
from bench.report import Figure, Skipped
from bench.world import DaemonProcess, Fakes, free_port

__all__ = ["run"]

REPLICAS = ("a", "b", "c")
CHANNEL = 'rate_limit = "500/s"\n'
TICK = 0.02


class Replicas:
    """The replica processes, each with its own port, config, log and channel token."""

    def __init__(self, fakes: Fakes, folder: Path, state: str, ttl: float) -> None:
        self.fakes = fakes
        self.folder = folder
        self.state = state
        self.ttl = ttl
        self.daemons: dict[str, DaemonProcess] = {}
        self.tokens: dict[str, str] = {}
        self.alive: list[str] = []

    async def start(self, name: str) -> None:
        port = free_port()
        self.tokens[name] = f"{name}-{self.fakes.env['BENCH_POS_TOKEN']}"
        self.fakes.pos.also_accept.add(self.tokens[name])
        channel = self.fakes.channel("inventory_api", "pos", self.folder, CHANNEL)
        config = self.fakes.write_config(
            self.folder,
            channel,
            port=port,
            sync='debounce = "0s"\nmax_delay = "1s"',
            state=self.state,
            daemon=f'lease_ttl = "{self.ttl:g}s"',
            filename=f"{name}.toml",
        )
        env = {**self.fakes.env, "BENCH_POS_TOKEN": self.tokens[name]}
        daemon = DaemonProcess(config, port, env, self.folder / f"{name}.log")
        await daemon.start()
        self.daemons[name] = daemon
        self.alive.append(name)

    async def leader(self, session: aiohttp.ClientSession, within: float) -> str:
        """The live replica that says it leads, once one does."""
        with anyio.fail_after(within):
            while True:
                for name in self.alive:
                    status = await self.daemons[name].status(session)
                    replica = (status or {}).get("replica") or {}
                    if replica.get("role") == "leader":
                        return name
                await anyio.sleep(0.1)

    async def kill(self, name: str) -> float:
        """SIGKILL, after taking it off the webhook rotation; returns the moment of the kill."""
        self.alive.remove(name)
        daemon = self.daemons[name]
        assert daemon.process is not None
        killed_at = time.monotonic()
        daemon.process.kill()
        await daemon.process.wait()
        return killed_at

    async def first_push_after(self, killed: str, since: float, within: float) -> tuple[str, float]:
        """The replica whose push reached the channel first after `since`, and when."""
        by_token = {token: name for name, token in self.tokens.items()}
        senders = self.fakes.pos.senders
        seen = 0
        with anyio.fail_after(within):
            while True:
                for at, token in senders[seen:]:
                    if at > since and by_token.get(token, killed) != killed:
                        return by_token[token], at
                seen = len(senders)
                await anyio.sleep(0.01)

    async def stop(self) -> None:
        for daemon in self.daemons.values():
            await daemon.stop()


async def _deliver(
    session: aiohttp.ClientSession,
    replicas: Replicas,
    turn: Iterator[int],
    token: str,
    sku: str,
) -> None:
    """Post keyCRM's webhook for one SKU to the next live replica; as keyCRM would, post it again
    (to the next one) if the answer is not 202, say because the replica died mid-request."""
    body = orjson.dumps([{"sku": sku, "offer_id": 0, "in_stock": 0, "in_reserve": 0}])
    for _ in range(2 * len(REPLICAS)):
        base = replicas.daemons[replicas.alive[next(turn) % len(replicas.alive)]].base
        try:
            async with session.post(f"{base}/webhooks/keycrm/{token}", data=body) as answer:
                if answer.status == 202:
                    return
        except aiohttp.ClientError:
            pass
    raise RuntimeError(f"no replica took the webhook for {sku}")


async def _drive(fakes: Fakes, replicas: Replicas, rate: float, stop: anyio.Event) -> None:
    """`rate` changes a second, one webhook each, to the live replicas in turn."""
    rng = random.Random(11)
    offers = [o for o in fakes.keycrm.offers.values() if o.sku]
    token = fakes.env["BENCH_WEBHOOK_TOKEN"]
    turn = itertools.count()
    owed = 0.0
    async with aiohttp.ClientSession() as session:
        tick = time.monotonic()
        while not stop.is_set():
            owed += rate * TICK
            chosen = rng.sample(offers, int(owed))
            owed -= len(chosen)
            for offer in chosen:
                warehouse, (quantity, reserve) = next(iter(offer.stock.items()))
                offer.stock = {warehouse: (max(reserve, quantity + rng.choice((-1, 1))), reserve)}
                assert offer.sku is not None
                await _deliver(session, replicas, turn, token, offer.sku)
            tick += TICK
            await anyio.sleep(max(0.0, tick - time.monotonic()))


async def run(options: Options) -> list[Figure]:
    bindir = find_bindir()
    if bindir is None:
        raise Skipped(NO_BINARIES)
    skus, ttl = options.size(1_000), options.lease_ttl
    fakes = Fakes(skus)
    took: list[float] = []
    with (
        tempfile.TemporaryDirectory(dir=options.workdir) as folder,
        running_server(bindir, DURABLE) as server,
        server.database() as database,
    ):
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            await fakes.start(stack)
            replicas = Replicas(fakes, Path(folder), state_url(server.dsn(database)), ttl)
            stack.push_async_callback(replicas.stop)
            for name in REPLICAS:
                await replicas.start(name)
            leader = await replicas.leader(session, within=60)
            await replicas.daemons[leader].wait_settled(session, within=skus / 100 + 120)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drive, fakes, replicas, options.change_rate, stop)
                for _ in range(len(REPLICAS) - 1):
                    await anyio.sleep(1.0)  # changes flowing through the leader
                    killed_at = await replicas.kill(leader)
                    leader, pushed_at = await replicas.first_push_after(
                        leader, killed_at, within=ttl * 3 + 60
                    )
                    took.append(pushed_at - killed_at)
                await anyio.sleep(1.0)
                stop.set()
            with anyio.fail_after(60):
                while not fakes.pos_consistent():
                    await anyio.sleep(0.1)
    load = (
        f"{len(REPLICAS)} replicas, {skus:,} SKUs, {options.change_rate:g} changes/s by webhook, "
        f"lease_ttl {ttl:g} s; each kill: {', '.join(f'{t:.1f} s' for t in took)}"
    )
    return [
        Figure(
            "ha",
            "ha.failover",
            "failover: leader SIGKILL to the first push by the new leader, worst kill",
            max(took),
            "s",
            ttl + 5,
            "lower",
            f"{load}; target lease_ttl + 5 s",
        ),
        Figure("ha", "ha.lease_ttl", "lease TTL used (daemon.lease_ttl)", ttl, "s"),
    ]
