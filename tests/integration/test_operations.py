"""The daemon as systemd and an operator drive it: notify socket, signals, CLI commands."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest

from tests.conftest import World, eventually
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Notifications:
    """A fake systemd notify socket collecting every datagram the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def collect(self) -> None:
        while True:
            await anyio.wait_readable(self.sock)
            self.messages.append(self.sock.recv(4096).decode())

    def seen(self, text: str) -> bool:
        return any(text in m for m in self.messages)


@asynccontextmanager
async def daemon_process(path: Path, env: dict[str, str]) -> AsyncIterator[anyio.abc.Process]:
    # Its log goes to a file: a pipe nobody reads fills up and stalls the daemon.
    with (path.parent / "daemon.log").open("ab") as log:
        process = await anyio.open_process(
            [sys.executable, "-m", "daemon", "run", "-c", str(path)],
            env={**os.environ, **env},
            stdout=log,
            stderr=log,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def metric(session: aiohttp.ClientSession, port: int, line_start: str) -> float | None:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return None


async def cli(*args: str) -> tuple[int, str, str]:
    result = await anyio.run_process([sys.executable, "-m", "daemon", *args], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_systemd_notify_signals_and_commands(world: World) -> None:
    world.keycrm.populate(12)
    pos = await world.add_shop("pos")
    port = free_port()
    path = world.write_config()
    path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    notes = Notifications(world.tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(notes.path), "WATCHDOG_USEC": "200000"}
    async with anyio.create_task_group() as group, aiohttp.ClientSession() as session:
        group.start_soon(notes.collect)
        async with daemon_process(path, env) as process:
            await eventually(lambda: notes.seen("READY=1"), timeout=20)
            await eventually(lambda: in_sync(world))
            await eventually(lambda: notes.seen("WATCHDOG=1") and notes.seen("STATUS="))

            # operator commands against the running daemon
            code, out, _ = await cli("status", "-c", str(path))
            assert code == 0
            assert "pos" in out and "  ready" in out
            code, out, _ = await cli("history", "-c", str(path), "SKU-00003")
            assert code == 0
            assert '["400000000003","S1"]' in out and "ok" in out

            # SIGUSR1: everything is pushed again
            before = len(pos.requests)
            process.send_signal(signal.SIGUSR1)
            await eventually(lambda: len(pos.requests) >= before + 12)
            code, _, _ = await cli("resync", "-c", str(path))
            assert code == 0
            await eventually(lambda: len(pos.requests) >= before + 24)

            # SIGHUP with a broken file: keep running, count the error
            good = path.read_text()
            path.write_text(good.replace('rate_limit = "1000/s"', 'rate_limit = "fast"'))
            process.send_signal(signal.SIGHUP)
            errors = 'stocksync_config_reloads_total{result="error"}'
            await eventually_async(lambda: metric(session, port, errors), 1.0)
            assert notes.seen("RELOADING=1")

            # SIGHUP with a good file: reload, resync, ready again
            notes.messages.clear()
            path.write_text(good.replace('store = "S1"', 'store = "S1"\nbuffer = 1'))
            process.send_signal(signal.SIGHUP)
            await eventually(lambda: notes.seen("READY=1"))
            ok = 'stocksync_config_reloads_total{result="ok"}'
            await eventually_async(lambda: metric(session, port, ok), 1.0)
            offer = world.keycrm.by_sku("SKU-00001")
            expected = max(0, int(offer.quantity - offer.reserve) - 1)
            await eventually(lambda: pos.quantity("400000000001", "S1") == expected)

            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                code = await process.wait()
            log = (path.parent / "daemon.log").read_text()[-3000:]
            assert code == 0, log
        await eventually(lambda: notes.seen("STOPPING=1"))
        group.cancel_scope.cancel()
    notes.sock.close()


async def eventually_async(probe, want: float, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while await probe() != want:
            await anyio.sleep(0.05)


async def test_commands_explain_what_they_need(world: World) -> None:
    path = world.write_config(channels="")
    code, _, err = await cli("once", "-c", str(path))
    assert code == 2
    assert "channel: at least one [[channel]] is required" in err
    await world.add_shop("pos")
    path = world.write_config()
    code, _, err = await cli("status", "-c", str(path))
    assert code == 1
    assert "cannot reach the daemon" in err
    code, out, _ = await cli("history", "-c", str(path), "SKU-1")
    assert code == 1 or "no pushes" in out
