"""What `run` needs from the machine, checked before it is needed: the state file and the listener.

`load_config` checks the file itself; this checks the world the file points at. `check-config`
and `run` both call it (the one preflight), so they agree: what one refuses the other refuses
with the same line, and what one accepts the other starts on. A state or a port a running
stocksync holds is refused by both (`run` could not start beside it; the line says how to
reload that one instead), and a state folder that does not exist is accepted by both where it
can be made (`run` makes it). Each check returns a `(key, problem)` fault like the loader's, or
nothing. The checks change nothing: the state file is only read, a probe file is created and
removed beside it, its lock is tried shared and dropped, and the listener is bound and released.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import urllib.request
from pathlib import Path

from daemon.shell.listener import parse_listen
from daemon.shell.statelock import holder

__all__ = ["check_listen", "check_state", "check_state_folder", "preflight"]

_SQLITE_HEADER = b"SQLite format 3\x00"


def preflight(state_path: Path, listen_at: str) -> list[tuple[str, str]]:
    """Every fault of the machine's side, all at once, keyed like the loader's."""
    faults = []
    state = check_state(state_path)
    if state is not None:
        faults.append(("daemon.state", state))
    listen = check_listen(listen_at)
    if listen is not None:
        faults.append(("daemon.listen", listen))
    return faults


def check_state(path: Path) -> str | None:
    """Why SQLite could not keep its state at `path`, or None."""
    try:
        return _check_state(path)
    except ValueError:  # a NUL byte, say: no file system takes it
        return f"{str(path)[:100]!r} is not a usable file path"


def _check_state(path: Path) -> str | None:
    if "\0" in str(path):
        raise ValueError("embedded NUL")
    if path.is_dir():
        return f"{path} is a folder; give a file path, e.g. {path / 'stocksync.db'}"
    folder = path.parent
    if not folder.is_dir():
        problem = _makeable(folder)
        if problem is not None:
            return f"folder {folder} does not exist and cannot be made: {problem}"
        return None  # run makes it
    try:
        # Really write: permissions, read-only mounts and ACLs all say no here.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stocksync-check-"):
            pass
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        return f"cannot write in {folder} ({reason}); SQLite keeps -wal and -shm files beside it"
    if not path.exists():
        return None
    if not path.is_file():
        return f"{path} is not a regular file"
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        return f"cannot read {path} ({(exc.strerror or str(exc)).lower()})"
    if not os.access(path, os.W_OK):
        return f"{path} is not writable by this user"
    if header and header != _SQLITE_HEADER:
        return f"{path} is not a SQLite database; move it away or point state elsewhere"
    pid = holder(path)
    if pid is not None:
        return (
            f"a stocksync (pid {pid}) is running on {path}: run refuses to start beside it; "
            "to apply this file to that one, reload it (systemctl reload stocksync, or "
            f"kill -HUP {pid})"
        )
    return None


def _makeable(folder: Path) -> str | None:
    """Why `folder` (missing) could not be made, or None: its nearest existing ancestor must be a
    folder this user can write in."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".stocksync-check-"):
            pass
    except OSError as exc:
        return f"cannot write in {existing} ({(exc.strerror or str(exc)).lower()})"
    return None


def check_state_folder(folder: Path) -> str | None:
    """Why `folder` cannot hold one state file per merchant (`[daemon] merchants` on SQLite),
    or None. A missing folder is fine where it can be made: `run` makes it (and each file)."""
    if "\0" in str(folder):  # no file system takes it (and pathlib says it does not exist)
        return f"{str(folder)[:100]!r} is not a usable folder path"
    existing = folder
    try:
        if folder.exists() and not folder.is_dir():
            return f"{folder} is a file; with a merchants folder, state names a folder"
        while not existing.exists():
            existing = existing.parent
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".stocksync-check-"):
            pass
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        return f"cannot write in {existing} ({reason}): the merchants' state files go in {folder}"
    return None


def check_listen(listen: str) -> str | None:
    """Why the listener could not bind `listen`, or None."""
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        return str(exc)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except ValueError:  # UnicodeError: a label over 63 characters, a NUL byte
        return f"host {host[:60]!r} is not a valid host name"
    except socket.gaierror as exc:
        return f"host {host!r} is not known ({(exc.strerror or str(exc)).lower()})"
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                # As the listener binds (reuse_address), so TIME_WAIT is no fault.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                if _stocksync_answers(host, port):
                    return (
                        f"port {port} on {host} is in use by a running stocksync: run cannot "
                        "listen there beside it; to apply this file to that one, reload it "
                        "(systemctl reload stocksync, or kill -HUP its pid)"
                    )
                return f"port {port} on {host} is in use by another program"
            if exc.errno == errno.EACCES:
                return f"binding port {port} needs privileges this user lacks"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine"
            return f"cannot bind {listen} ({(exc.strerror or str(exc)).lower()})"
    return None


def _stocksync_answers(host: str, port: int) -> bool:
    """Whether what holds the port is a stocksync (its /healthz answers "ok")."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 -- reaching a wildcard listener locally
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(f"http://{shown}:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200 and response.read(16) == b"ok\n")
    except (OSError, ValueError):
        return False
