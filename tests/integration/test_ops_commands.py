"""status, resync and history as an on-call person runs them: in another shell, without secrets."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import orjson
import pytest
import structlog

from adapters import ADAPTERS
from daemon.config.settings import load_config
from daemon.core.errors import ConfigError
from daemon.shell.daemon import Daemon
from tests.conftest import World, eventually, idle, running
from tests.integration.test_guard import glitch, in_stock, scan
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def without_secrets(**keep: str) -> dict[str, str]:
    """This process' environment with every test secret removed (the operator's shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("T_")}
    env.pop("STOCKSYNC_CONFIG", None)
    return {**env, **keep}


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "daemon", *args], check=False, env=env or without_secrets()
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def started(world: World, port: int) -> tuple[Daemon, Path]:
    path = world.write_config()
    path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    return Daemon(load_config(path, ADAPTERS), handle_signals=False), path


async def test_status_history_and_resync_need_no_channel_secret(world: World) -> None:
    world.keycrm.populate(6)
    pos = await world.add_shop("pos")
    await world.add_shop("web")
    daemon, path = await started(world, free_port())
    async with running(daemon):
        await eventually(lambda: in_sync(world) and in_sync(world, "web") and idle(daemon))

        code, out, err = await cli("status", "-c", str(path))
        assert code == 0, err
        assert "ready" in out and "NOT READY" not in out
        # "just now", or seconds ago when a loaded machine is slow to start the command
        assert re.search(r"last complete scan (just now|\d+s ago)", out) and "None" not in out
        assert [
            line.split()[:2] for line in out.splitlines() if line.startswith(("pos", "web"))
        ] == [
            ["pos", "up"],
            ["web", "up"],
        ]

        code, out, _ = await cli("status", "-c", str(path), "--json")
        assert code == 0
        data = orjson.loads(out)
        assert data["channels"]["pos"]["state"] == "up"
        assert data["channels"]["web"]["pending"] == 0

        code, out, err = await cli("history", "-c", str(path), "SKU-00003")
        assert code == 0, err
        assert "pos" in out and "web" in out and '["400000000003","S1"]' in out

        # resync: the admin token only, from the variable the config names
        before = len(pos.requests)
        code, out, err = await cli(
            "resync", "-c", str(path), env=without_secrets(T_ADMIN_TOKEN=world.admin_token)
        )
        assert code == 0, err
        assert out.startswith("resync started")
        await eventually(lambda: len(pos.requests) >= before + 6)

        # or from --token-env and --url, with no config at all
        code, _, err = await cli(
            "resync",
            "--url",
            f"http://127.0.0.1:{daemon.bound_port}",
            "--token-env",
            "MY_TOKEN",
            env=without_secrets(MY_TOKEN=world.admin_token),
        )
        assert code == 0, err
        code, _, err = await cli(
            "resync",
            "--url",
            f"http://127.0.0.1:{daemon.bound_port}",
            "--token-env",
            "MY_TOKEN",
            env=without_secrets(MY_TOKEN="wrong-token"),
        )
        assert code == 1
        assert err.strip() == "the daemon refused the admin token (HTTP 401)"
        code, _, err = await cli("resync", "-c", str(path))
        assert code == 2
        assert err.strip() == "daemon.admin_token: environment variable T_ADMIN_TOKEN is not set"


async def test_guard_release_shows_the_hold_then_releases_it_by_name(world: World) -> None:
    """`stocksync guard release`: the admin token only, like resync; what is held is shown
    first, and the history tells who released each item."""
    world.keycrm.populate(20)
    in_stock(world)
    pos = await world.add_shop("pos")
    await world.add_shop("web")
    daemon, path = await started(world, free_port())
    admin = without_secrets(T_ADMIN_TOKEN=world.admin_token)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and in_sync(world, "web") and idle(daemon))
        code, out, err = await cli("guard", "release", "-c", str(path), env=admin)
        assert (code, out.strip()) == (0, "the mass-change guard holds nothing"), err
        glitch(world)
        await scan(daemon)
        await scan(daemon)  # every SKU vanished: both channels on hold

        code, out, err = await cli("status", "-c", str(path))
        assert "HELD      pos: 20 zeros held by the mass-change guard" in out, err

        code, _, err = await cli("guard", "release", "-c", str(path), "--channel", "pos")
        assert code == 2 and "T_ADMIN_TOKEN is not set" in err
        code, out, err = await cli(
            "guard", "release", "-c", str(path), "--channel", "pos", env=admin
        )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "releasing:"
        assert re.fullmatch(
            r"  pos: 20 zeros held since \S+: scan \d+ would zero 20 of 20 in-stock items "
            r"\(fraction 0.3\)",
            lines[1],
        )
        assert lines[2] == "pos: 20 zeros released; they are pushed now"
        await eventually(lambda: set(pos.stock.values()) == {0} and idle(daemon))
        assert set(world.shops["web"].stock.values()) == {5}  # its hold is its own

        code, out, err = await cli("history", "-c", str(path), "SKU-00001", "--channel", "pos")
        assert re.search(r"released  guard release by \S+@\S+ via POST /admin/guard/release", out)


async def test_history_filters_newest_first(world: World) -> None:
    world.keycrm.populate(4)
    await world.add_shop("pos")
    await world.add_shop("web")
    daemon, _path = await started(world, free_port())
    async with running(daemon):
        await eventually(lambda: in_sync(world) and in_sync(world, "web") and idle(daemon))
        daemon.resync("http")
        pushes = world.shops["web"].requests
        await eventually(lambda: len(pushes) >= 8 and idle(daemon))
    state = str(world.tmp_path / "state.db")

    code, out, err = await cli("history", "--state", state, "SKU-00002", "--json")
    assert code == 0, err
    rows = orjson.loads(out)
    assert len(rows) == 4  # two channels, pushed twice each
    assert [r["at"] for r in rows] == sorted((r["at"] for r in rows), reverse=True)
    assert {r["channel"] for r in rows} == {"pos", "web"}
    assert set(rows[0]["after"]) == {"quantity"}

    code, out, _ = await cli("history", "--state", state, "SKU-00002", "--channel", "web", "--json")
    assert {r["channel"] for r in orjson.loads(out)} == {"web"}
    code, out, err = await cli("history", "--state", state, "SKU-00002", "--channel", "nope")
    assert (code, out) == (2, "")  # a typo is named, not "no pushes recorded"
    assert err.strip() == "--channel: no channel 'nope' in this state (channels: pos, web)"

    code, out, _ = await cli("history", "--state", state, "SKU-00002", "--limit", "1")
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[1] == "# 1 newest of 4 pushes; --limit 0 shows all"

    code, out, _ = await cli("history", "--state", state, "SKU-00002", "--since", "1h", "--json")
    assert len(orjson.loads(out)) == 4
    code, out, _ = await cli(
        "history", "--state", state, "SKU-00002", "--since", "2999-01-01", "--json"
    )
    assert orjson.loads(out) == []
    code, _, err = await cli("history", "--state", state, "SKU-00002", "--since", "soon")
    assert code == 2
    assert err.startswith("--since: 'soon' is neither a duration")


async def test_ordinary_failures_are_one_line_and_an_exit_code(tmp_path: Path) -> None:
    port = free_port()
    code, _, err = await cli("status", "--url", f"http://127.0.0.1:{port}")
    assert code == 1
    assert err.strip() == (
        f"cannot reach the daemon at http://127.0.0.1:{port}: 127.0.0.1:{port}: connection refused"
    )
    code, _, err = await cli("status", "-c", str(tmp_path / "missing.toml"))
    assert code == 2
    assert (
        err.strip() == f"config: cannot read {tmp_path / 'missing.toml'}: No such file or directory"
    )
    code, _, err = await cli("status")
    assert code == 2
    assert "no file given" in err
    garbage = tmp_path / "state.db"
    garbage.write_text("not a database")
    code, _, err = await cli("history", "--state", str(garbage), "SKU-1")
    assert code == 1
    assert err.startswith(f"cannot read the state file {garbage}:")
    assert "Traceback" not in err


async def test_status_reads_only_the_daemon_table(world: World) -> None:
    # A file whose channels are broken (no channel at all here) still tells status where to look.
    path = world.write_config(channels="")
    code, _, err = await cli("status", "-c", str(path))
    assert code == 1
    assert err.startswith("cannot reach the daemon at http://127.0.0.1:0")


async def test_port_in_use_is_one_line(world: World) -> None:
    await world.add_shop("pos")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = world.write_config()
        path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
        code, _, err = await cli("run", "-c", str(path), env=dict(os.environ))
    # run's preflight (check-config's) refuses before anything starts: one line, no log.
    assert code == 2
    assert "Traceback" not in err
    assert err.strip() == f"daemon.listen: port {port} on 127.0.0.1 is in use by another program"


async def test_watch_redraws_until_interrupted_and_a_closed_pipe_is_quiet(world: World) -> None:
    world.keycrm.populate(3)
    await world.add_shop("pos")
    daemon, _path = await started(world, free_port())
    async with running(daemon):
        url = f"http://127.0.0.1:{daemon.bound_port}"
        process = await anyio.open_process(
            [
                sys.executable,
                "-m",
                "daemon",
                "status",
                "--url",
                url,
                "--watch",
                "--interval",
                "0.2",
            ],
            env=without_secrets(),
        )
        frames = b""
        assert process.stdout is not None
        with anyio.fail_after(20):
            while frames.count(b"every 0.2s") < 2:
                frames += await process.stdout.receive()
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            assert await process.wait() == 0
        assert b"pos" in frames

        # `| head`: the reader goes away; exit as SIGPIPE would, without a traceback
        command = (
            f"set -o pipefail; {sys.executable} -m daemon status --url {url} --watch "
            "--interval 0.1 | head -n 2"
        )
        result = await anyio.run_process(["bash", "-c", command], check=False)
        assert result.returncode == 141
        assert b"Traceback" not in result.stderr
        assert result.stderr == b""


async def test_a_rejected_reload_logs_its_faults_once_and_a_good_one_reads_as_a_reload(
    world: World,
) -> None:
    world.keycrm.populate(2)
    await world.add_shop("pos")
    config = world.config()
    answers: list[object] = [ConfigError([("channel[0].rate_limit", "bad")]), config]

    def reload():  # type: ignore[no-untyped-def]
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    daemon = Daemon(config, handle_signals=False, reload=reload)
    with structlog.testing.capture_logs() as logs:
        async with running(daemon):
            await eventually(lambda: in_sync(world))
            await daemon.reload()
            await daemon.reload()
            await eventually(lambda: any(e["event"] == "config.applied" for e in logs))
    failed = [e for e in logs if e["event"] == "config.reload_failed"]
    assert len(failed) == 1
    assert failed[0]["faults"] == ["channel[0].rate_limit: bad"]
    assert "exc_info" not in failed[0]
    assert [e["event"] for e in logs].count("daemon.started") == 1
    assert [e["event"] for e in logs].count("config.reloaded") == 1


def test_history_reads_the_state_without_writing_it(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    db = sqlite3.connect(state)
    db.executescript(
        "CREATE TABLE history (id INTEGER PRIMARY KEY, channel TEXT, key TEXT, before TEXT,"
        " after TEXT, outcome TEXT, error TEXT, at REAL);"
        "CREATE TABLE shares (channel TEXT, sku TEXT, key TEXT, quantity TEXT, price TEXT);"
    )
    db.execute("INSERT INTO shares VALUES ('pos', 'A', 'k', '1', NULL)")
    db.execute(
        "INSERT INTO history (channel, key, before, after, outcome, error, at) "
        "VALUES ('pos', 'k', NULL, '{\"q\":3,\"p\":\"9.5\"}', 'ok', NULL, ?)",
        (time.time(),),
    )
    db.commit()
    db.close()
    state.chmod(0o444)
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "history", "--state", str(state), "A"],
        capture_output=True,
        text=True,
        check=False,
        env=without_secrets(),
    )
    assert result.returncode == 0, result.stderr
    assert "pos  k  - -> qty=3 price=9.5  ok" in result.stdout


async def test_an_unusable_state_file_is_one_line(world: World) -> None:
    await world.add_shop("pos")
    blocker = world.tmp_path / "not-a-folder"
    blocker.write_text("")
    path = world.write_config(daemon=f'state = "{blocker / "state.db"}"')
    text = path.read_text().replace(f'state = "{world.tmp_path / "state.db"}"\n', "", 1)
    path.write_text(text)
    code, _, err = await cli("once", "-c", str(path), env=dict(os.environ))
    assert code == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"cannot use {blocker}")
    # run refuses in its preflight, as check-config does: the same one line, exit 2
    code, _, err = await cli("run", "-c", str(path), env=dict(os.environ))
    assert code == 2, err
    assert err.strip() == (
        f"daemon.state: folder {blocker} does not exist and cannot be made: {blocker} is a file"
    )
