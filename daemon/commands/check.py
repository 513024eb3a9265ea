"""`stocksync check-config`: what the files hold and, with `--connect`, whether it reaches.

The files were loaded with the machine checks (the main file's faults never get here: they are a
ConfigError, printed as `key: problem` lines, exit 2). A single-merchant file prints what it always
has: `FILE: ok (N channels)`. A merchants folder prints every fault of every merchant file
(`acme.toml keycrm.api_key: ...`, one a line on stderr) and a line per merchant, `acme.toml: ok (2
channels)` or `bad.toml: 3 faults`, then exits 2 if any file has a fault. `--connect` tries the
endpoints of every valid (selected) merchant, several merchants at once.
"""

from __future__ import annotations

import sys

import anyio

from daemon.commands.connect import Reach, connect
from daemon.commands.merchants import merchant_file, pick
from daemon.config.deployment import Deployment, merchant_file_faults
from daemon.config.settings import Config

__all__ = ["check_config"]

EXIT_CONFIG = 2
#: merchants whose endpoints `--connect` tries at once (each tries all of its own at once)
CONNECT_AT_ONCE = 16


def check_config(deployment: Deployment, *, merchant: str | None, connect_too: bool) -> int:
    """0 all good, 1 an endpoint failed (`--connect`), 2 a merchant file has a fault."""
    if deployment.folder is None:
        config = pick(deployment, merchant)  # `--merchant default` is fine, another refused
        print(f"{config.path}: ok ({_channels(len(config.channels))})")
        if not connect_too:
            return 0
        reaches = anyio.run(connect, config)
        _print_reaches(reaches, prefix="")
        return 0 if all(reach.ok for reach in reaches) else 1
    if merchant is not None:
        merchant_file_faults(deployment, merchant)  # ConfigError for a name it does not hold
    names = deployment.names if merchant is None else [merchant]
    broken = False
    for name in names:
        faults = deployment.broken.get(name, ())
        file = merchant_file(deployment, name)
        if faults:
            broken = True
            for key, problem in faults:
                print(f"{key}: {problem}", file=sys.stderr)
            count = f"{len(faults)} fault" + ("s" if len(faults) != 1 else "")
            print(f"{file}: {count}", file=sys.stderr)
        else:
            print(f"{file}: ok ({_channels(len(deployment.merchants[name].channels))})")
    reached = True
    if connect_too:
        valid = [deployment.merchants[n] for n in names if n in deployment.merchants]
        for config, reaches in anyio.run(_connect_all, valid):
            _print_reaches(reaches, prefix=f"{config.path.name} ")
            reached = reached and all(reach.ok for reach in reaches)
    if broken:
        return EXIT_CONFIG
    return 0 if reached else 1


async def _connect_all(configs: list[Config]) -> list[tuple[Config, list[Reach]]]:
    """Every merchant's endpoints, at most `CONNECT_AT_ONCE` merchants at a time, in order."""
    results: dict[int, list[Reach]] = {}
    limit = anyio.CapacityLimiter(CONNECT_AT_ONCE)

    async def one(index: int, config: Config) -> None:
        async with limit:
            results[index] = await connect(config)

    async with anyio.create_task_group() as group:
        for index, config in enumerate(configs):
            group.start_soon(one, index, config)
    return [(config, results[i]) for i, config in enumerate(configs)]


def _print_reaches(reaches: list[Reach], *, prefix: str) -> None:
    for reach in reaches:
        print(prefix + reach.line(), file=sys.stdout if reach.ok else sys.stderr)


def _channels(count: int) -> str:
    return "1 channel" if count == 1 else f"{count} channels"
