"""A replica in its own process for the process-level lease tests: it "pushes" (appends a line
to its file) every 50 ms while it leads, checking its lease before each push as the dispatcher
must. Run: python -m tests.postgres.contender DSN NAME FILE TTL
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

from daemon.replicas.replica import Replica
from daemon.store.pg.lease import Lease


async def contend(dsn: str, name: str, out: Path, ttl: float) -> None:
    replica = await Replica.open(dsn, "acme", ttl=ttl, holder=name, max_size=2)

    async def lead(lease: Lease) -> None:
        while True:
            current = replica.keeper.lease()
            if current is not None and current.epoch == lease.epoch:
                with out.open("a") as handle:
                    handle.write(f"{time.time():.3f} {name} {lease.epoch}\n")
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        await tg.start(replica.run)
        tg.start_soon(replica.keeper.lead, lead)


if __name__ == "__main__":
    anyio.run(contend, sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]))
