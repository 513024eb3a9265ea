"""The one HTTP listener, for the life of the process: a reload never takes it down.

A reload that changes `daemon.listen` binds the new address first and only then lets go of the
old one, so a port that is taken (or a host that does not resolve) fails the reload, not the
daemon, which keeps serving where it was.
"""

from __future__ import annotations

import structlog
from aiohttp import web

__all__ = ["Listener", "split_listen"]

log = structlog.get_logger("stocksync.http")


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) into its parts."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Listener:
    """Serves one aiohttp app on one address at a time."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._site: web.TCPSite | None = None
        self.listen: str | None = None
        self.port: int | None = None

    async def start(self, listen: str) -> int:
        await self._runner.setup()
        return await self.rebind(listen)

    async def rebind(self, listen: str) -> int:
        """Serve on `listen`; raises OSError (and keeps the old address) if it cannot bind."""
        if listen == self.listen and self.port is not None:
            return self.port
        host, port = split_listen(listen)
        site = web.TCPSite(self._runner, host, port)
        before = {tuple(a) for a in self._runner.addresses}
        await site.start()
        bound = [a for a in self._runner.addresses if tuple(a) not in before]
        old, self._site = self._site, site
        self.port = int(bound[0][1]) if bound else port
        self.listen = listen
        if old is not None:
            await old.stop()
        log.info("http.listening", listen=listen, port=self.port)
        return self.port

    async def close(self) -> None:
        await self._runner.cleanup()
