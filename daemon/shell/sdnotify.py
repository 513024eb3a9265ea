"""systemd's notify protocol: one datagram to `$NOTIFY_SOCKET`, e.g. `READY=1`.

Ten lines, so written here rather than taken from the unmaintained `sdnotify` package. Outside
systemd (no `$NOTIFY_SOCKET`) every message is dropped.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable

__all__ = ["notifier", "watchdog_interval"]


def notifier(environ: dict[str, str] | None = None) -> Callable[[str], None]:
    """A function that sends one notify message, or does nothing outside systemd."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return lambda _message: None
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket

    def send(message: str) -> None:
        # systemd gone (stopping): nothing useful to do about a lost message
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto(message.encode(), address)

    return send


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1 (half of `WatchdogSec`), or None when no watchdog is set."""
    env = environ if environ is not None else dict(os.environ)
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.05)
    except ValueError:
        return None
