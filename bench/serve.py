"""`python -m bench.serve -c FILE`: `stocksync run` for a main file that names a merchants folder.

A stand-in while `stocksync run` reads only single-merchant files (the command line's support
for `[daemon] merchants`, issue 19, lands separately): it loads the whole deployment and runs the
same `Daemon` as `run` does, with its signals (SIGTERM, SIGUSR1, SIGHUP), logging and secret
scrubbing. Once `run` takes a merchants folder, bench/merchants.py spawns that instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from adapters import ADAPTERS
from daemon.config.deployment import Deployment, load_deployment
from daemon.config.settings import secret_values
from daemon.core import redact
from daemon.shell.daemon import Daemon
from daemon.shell.logs import configure_logging


def _secrets(deployment: Deployment) -> list[str]:
    return [s for config in deployment.merchants.values() for s in secret_values(config)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("-c", "--config", type=Path, required=True)
    args = parser.parse_args(argv)

    def load() -> Deployment:
        deployment = load_deployment(args.config, ADAPTERS)
        redact.update(_secrets(deployment))
        return deployment

    deployment = load()
    configure_logging(
        fmt=deployment.daemon.log_format,
        level=deployment.daemon.log_level,
        secrets=_secrets(deployment),
    )
    anyio.run(Daemon(deployment, reload=load).run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
