"""The `stocksync` program's first lines: Ctrl-C at any moment of start-up is one line.

Importing the command line (aiohttp, pydantic, psycopg...) takes a second or more on a busy
machine. A KeyboardInterrupt raised inside an import is not reliably one: Python 3.11 wraps one
raised in a `__set_name__` (pydantic's model classes) in a RuntimeError with its traceback, and
one unwound through the import machinery can make the interpreter end by SIGINT (-2) after our
message. So while importing, Ctrl-C raises nothing: nothing has started, so the process prints
the line and exits 130 on the spot. After that a KeyboardInterrupt (the command's own, or one
that lands after the command has returned) is one line and 130 too, as a shell reports an
interrupted program. Once the daemon runs, SIGINT is its graceful stop (exit 0).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

__all__ = ["INTERRUPTED", "main"]

#: what an interrupted command prints (on stderr), and nothing else
INTERRUPTED = "stocksync: interrupted"


def main() -> int:
    """Import and run the command line; an interrupt anywhere in it is one line and 130."""
    # Not when started with SIGINT ignored (nohup, `&` in a script): that stays as it is.
    importing = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if importing:
        signal.signal(signal.SIGINT, _interrupted_while_importing)
    try:
        try:
            from daemon.commands.cli import main as command  # noqa: PLC0415 (the slow part)
        finally:
            if importing:  # from here on a Ctrl-C is a KeyboardInterrupt again, caught below
                signal.signal(signal.SIGINT, signal.default_int_handler)
        code = command()
    except KeyboardInterrupt:
        code = 130
    # The command is over: a Ctrl-C still pending (one that came as the event loop closed runs
    # its handler at the next line of Python) must not turn the exit into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == 130:  # the command line's own exit for an interrupt
        print(INTERRUPTED, file=sys.stderr)
    return code


def _interrupted_while_importing(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C before the command line has been imported: the line, and exit at once."""
    os.write(sys.stderr.fileno(), f"{INTERRUPTED}\n".encode())
    os._exit(130)
