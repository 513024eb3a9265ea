"""`python -m bench.probe URL`: asks URL every 20 ms until SIGTERM, then prints what it saw.

A process of its own, so the bench's event loop (busy serving the fakes) never delays a probe:
a slow answer is the daemon's. Prints JSON: `[[sent, seconds, status], ...]` with `sent` on the
system-wide monotonic clock (comparable with the parent's) and status 0 for a refused or
failed connection.
"""

from __future__ import annotations

import http.client
import signal
import sys
import time
import urllib.parse

import orjson

EVERY = 0.02


def main(url: str) -> None:
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    parts = urllib.parse.urlsplit(url)
    seen: list[tuple[float, float, int]] = []
    print("ready", flush=True)
    while not stopping:
        sent = time.monotonic()
        status = 0
        try:
            connection = http.client.HTTPConnection(
                parts.hostname or "127.0.0.1", parts.port, timeout=120
            )
            connection.request("GET", parts.path)
            response = connection.getresponse()
            response.read()
            status = response.status
            connection.close()
        except OSError:
            status = 0
        seen.append((sent, time.monotonic() - sent, status))
        time.sleep(max(0.0, sent + EVERY - time.monotonic()))
    sys.stdout.write(orjson.dumps(seen).decode() + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
