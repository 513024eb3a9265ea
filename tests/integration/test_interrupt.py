"""Ctrl-C at any moment of a real `stocksync run`'s start-up is one line, never a traceback."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from daemon.commands.entry import INTERRUPTED

pytestmark = pytest.mark.anyio

# keyCRM and the channel on a port nobody listens on: the daemon starts all the same.
CONFIG = """\
[daemon]
state = "{state}"
listen = "127.0.0.1:0"

[keycrm]
base_url = "http://127.0.0.1:9/v1"
api_key_env = "T_INTERRUPT_KEY"

[[channel]]
name = "pos"
type = "inventory_api"
base_url = "http://127.0.0.1:9"
token_env = "T_INTERRUPT_KEY"
match = "upc"
store = "1"
"""


async def interrupted(config: Path, *, after: float | None, until: bytes = b"") -> tuple[int, str]:
    """Start `stocksync run`, SIGINT it `after` seconds or once stderr shows `until`."""
    env = {**os.environ, "T_INTERRUPT_KEY": "interrupt-test-key"}
    process = await anyio.open_process(
        [sys.executable, "-m", "daemon", "run", "-c", str(config)], env=env
    )
    assert process.stderr is not None
    err = b""
    async with process:
        if after is not None:
            await anyio.sleep(after)
        else:
            with anyio.fail_after(30):
                while until not in err:
                    err += await process.stderr.receive()
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            async for chunk in process.stderr:
                err += chunk
            code = await process.wait()
    return code, err.decode()


@pytest.mark.parametrize(
    ("after", "until"),
    [(0.2, b""), (0.6, b""), (None, b'"event":"http.listening"')],
    ids=["importing", "loading", "starting"],
)
async def test_ctrl_c_during_start_up_is_one_line(
    tmp_path: Path, after: float | None, until: bytes
) -> None:
    config = tmp_path / "stocksync.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state.db"), encoding="utf-8")
    code, err = await interrupted(config, after=after, until=until)
    assert "Traceback" not in err, err
    if code == 130:  # before the daemon took over SIGINT
        assert err.strip() == INTERRUPTED
    else:  # it had: a graceful stop
        assert code == 0, err
        assert '"event":"daemon.stopped"' in err


# A command line whose import is slow where a Ctrl-C hurts most: inside a `__set_name__`, as in
# pydantic's model classes, where Python 3.11 turns a KeyboardInterrupt into a RuntimeError.
SLOW_IMPORT = """
import importlib.abc, importlib.util, sys, time

class Slow(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        class Field:
            def __set_name__(self, owner, name):
                print("importing", flush=True)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    pass

        class Settings:
            check = Field()

        module.main = lambda: 0

class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "daemon.commands.cli":
            return importlib.util.spec_from_loader(name, Slow())
        return None

sys.meta_path.insert(0, Finder())
from daemon.commands.entry import main
raise SystemExit(main())
"""


async def test_ctrl_c_inside_an_import_is_one_line_and_130() -> None:
    process = await anyio.open_process([sys.executable, "-c", SLOW_IMPORT])
    assert process.stdout is not None
    assert process.stderr is not None
    async with process:
        with anyio.fail_after(20):
            assert b"importing" in await process.stdout.receive()
        process.send_signal(signal.SIGINT)
        err = b""
        with anyio.fail_after(20):
            async for chunk in process.stderr:
                err += chunk
            code = await process.wait()
    assert (code, err.decode().strip()) == (130, INTERRUPTED)
