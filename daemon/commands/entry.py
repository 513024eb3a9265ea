"""The `stocksync` program's first lines: Ctrl-C at any moment of start-up is one line.

Importing the command line (aiohttp, pydantic, psycopg...) takes a second or more on a busy
machine, and a Ctrl-C there would print Python's traceback of whichever import it hit; so would
one that lands after the command has returned. Here both are one line and exit 130, as a shell
reports an interrupted program. Once the daemon runs, SIGINT is its graceful stop (exit 0).
"""

from __future__ import annotations

import signal
import sys

__all__ = ["INTERRUPTED", "main"]

#: what an interrupted command prints (on stderr), and nothing else
INTERRUPTED = "stocksync: interrupted"


def main() -> int:
    """Import and run the command line; an interrupt anywhere in it is one line and 130."""
    try:
        from daemon.commands.cli import main as command  # noqa: PLC0415 (an interrupt may land in it)

        code = command()
    except KeyboardInterrupt:
        code = 130
    # The command is over: a Ctrl-C still pending (one that came as the event loop closed runs
    # its handler at the next line of Python) must not turn the exit into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == 130:  # the command line's own exit for an interrupt
        print(INTERRUPTED, file=sys.stderr)
    return code
