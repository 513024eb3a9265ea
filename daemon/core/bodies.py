"""Reading an HTTP answer with a ceiling, so a huge body or a gzip bomb cannot eat the memory.

Every body we read from keyCRM or a channel goes through `read_body`: it counts the bytes after
decompression (aiohttp inflates in bounded steps as we read) and gives up past `limit`. The
caller turns `BodyTooLarge` into its own retryable error: the answer may be a proxy's error page
or a passing fault, and an item must never be dropped for it.
"""

from __future__ import annotations

import aiohttp

__all__ = ["MAX_BODY_BYTES", "BodyTooLarge", "read_body"]

#: 10 MiB: a channel's answer to one batch is a few KiB. keyCRM's pages have ceilings of their
#: own, by what 50 offers can weigh (`daemon/keycrm/client.py`).
MAX_BODY_BYTES = 10 * 1024 * 1024

_CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    """The answer's body, decompressed, was larger than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {_size(limit)} (decompressed); not read")
        self.limit = limit


def _size(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    return f"{limit} bytes"


async def read_body(response: aiohttp.ClientResponse, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, decompressed, or `BodyTooLarge` as soon as it passes `limit` bytes."""
    declared = response.content_length
    if declared is not None and declared > limit and not response.headers.get("Content-Encoding"):
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            response.close()  # do not drain the rest into a pooled connection
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
