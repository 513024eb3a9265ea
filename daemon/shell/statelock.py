"""One daemon per state file: an exclusive lock on `STATE.lock`, held for the process's life.

Two daemons on one state would each scan keyCRM and together overspend its budget, and race
each other's claims. `fcntl.flock` is released by the kernel when the process dies, however it
dies, so a SIGKILL never leaves a stale lock behind; the pid written into the file only serves
the error message. Read-only commands (`history`, `once --dry-run`) never take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from daemon.core.errors import StateUnusable

__all__ = ["StateLock", "holder", "lock_path"]


def lock_path(state: Path) -> Path:
    return state.with_name(state.name + ".lock")


def holder(state: Path) -> str | None:
    """The pid of the stocksync running on `state`, or None when none is (check-config's probe:
    a shared lock tried and dropped at once; the file is never created or written)."""
    try:
        fd = os.open(lock_path(state), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class StateLock:
    """`with StateLock(state):` holds the lock; a second holder gets `StateUnusable` at once."""

    def __init__(self, state: Path) -> None:
        self.path = lock_path(state)
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateUnusable(
                f"{self.path.with_suffix('')}: another stocksync (pid {holder}) is running on "
                "this state; stop it first, or give this one its own `daemon.state`"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
