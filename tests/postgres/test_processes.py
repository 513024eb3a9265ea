"""Replicas as real processes: SIGKILL and SIGSTOP a leader, and watch who pushes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.pg import until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
TTL = 1.5


class Contenders:
    def __init__(self, dsn: str, folder: Path) -> None:
        self.dsn = dsn
        self.folder = folder
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "tests.postgres.contender", self.dsn, name,
             str(self.pushes_file(name)), str(TTL)],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def pushes_file(self, name: str) -> Path:
        return self.folder / f"{name}.pushes"

    def pushes(self, name: str) -> list[tuple[float, int]]:
        path = self.pushes_file(name)
        if not path.exists():
            return []
        lines = [line.split() for line in path.read_text().splitlines() if line.count(" ") == 2]
        return [(float(at), int(epoch)) for at, _, epoch in lines]

    async def pushing(self, name: str, count: int = 3, after: int = 0) -> list[tuple[float, int]]:
        async def enough() -> list[tuple[float, int]] | None:
            pushes = self.pushes(name)
            return pushes if len(pushes) >= after + count else None

        return await until(enough, timeout=20)

    def signal(self, name: str, number: int) -> None:
        os.kill(self.processes[name].pid, number)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait()


@pytest.fixture
def contenders(pg_dsn: str, tmp_path: Path) -> Iterator[Contenders]:
    group = Contenders(pg_dsn, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


async def test_a_sigkilled_leader_is_replaced_within_the_ttl(contenders: Contenders) -> None:
    contenders.start("a")
    first = await contenders.pushing("a")
    contenders.start("b")
    await anyio.sleep(0.3)  # b is up and bidding
    assert contenders.pushes("b") == []  # one leader
    contenders.signal("a", signal.SIGKILL)
    killed = contenders.pushes("a")[-1][0]
    taken = await contenders.pushing("b", count=1)
    assert taken[0][1] == first[0][1] + 1
    assert taken[0][0] - killed < TTL + 5  # the bound; in practice about the TTL


async def test_a_paused_leader_pushes_nothing_after_waking_and_stands_by(
    contenders: Contenders,
) -> None:
    contenders.start("a")
    await contenders.pushing("a")
    contenders.start("b")
    contenders.signal("a", signal.SIGSTOP)  # a GC pause, a frozen VM...
    stopped_with = len(contenders.pushes("a"))
    await contenders.pushing("b", count=3)  # b took over while a slept
    contenders.signal("a", signal.SIGCONT)
    seen = len(contenders.pushes("b"))
    await contenders.pushing("b", count=10, after=seen)  # half a second of b's pushes
    assert len(contenders.pushes("a")) == stopped_with  # a pushed nothing after waking
    contenders.signal("b", signal.SIGKILL)
    a_again = await contenders.pushing("a", count=1, after=stopped_with)
    b_epoch = contenders.pushes("b")[-1][1]
    assert a_again[stopped_with][1] == b_epoch + 1  # a leads again, as a new epoch
