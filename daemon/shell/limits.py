"""The open-files limit a process serving many merchants needs, taken at start.

Each merchant holds its SQLite state (the file, its -wal, -shm and lock) or its share of the
pool, and a connection or two to keyCRM and each channel: 200 merchants pass the 1,024 soft
limit many hosts and container runtimes still start a process with. The hard limit is the
administrator's ceiling (`LimitNOFILE=`, `ulimit -Hn`); the soft one is ours to raise up to it.
"""

from __future__ import annotations

import resource

__all__ = ["raise_open_files"]

#: enough for a thousand merchants; an unlimited hard limit is not taken at its word
CEILING = 1 << 20


def raise_open_files() -> int:
    """Raise the soft limit on open files to the hard one (at most `CEILING`); the soft limit
    in force afterwards. A system that refuses keeps what it had."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft
        return wanted
    return soft
