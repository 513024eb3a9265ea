"""The naive sync keyCRM's help page suggests: pull all stock on an interval, push every item.

No state, no webhook, no diffing: each round reads every page of `/offers/stocks` (within the
keyCRM budget) and then sets every variant in Marketplacer (in batches, within its rate limit).
Written plainly against the HTTP APIs, as an integrator would, so it shares no code with
stocksync beyond the pacer that keeps it inside the limits.
"""

from __future__ import annotations

import math

import aiohttp
import orjson

from daemon.send.pacer import Pacer
from daemon.simulator import variant_id

__all__ = ["NaiveSync"]

_SELECTION = "variant { id countOnHand } errors { field messages }"


class NaiveSync:
    """One round at a time; `rounds` counts finished rounds."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        keycrm: str,
        keycrm_key: str,
        requests_per_minute: int,
        marketplacer: str,
        marketplacer_key: str,
        rate: float,
        batch: int,
    ) -> None:
        self._session = session
        self._keycrm = keycrm
        self._keycrm_headers = {"Authorization": f"Bearer {keycrm_key}"}
        self._keycrm_pacer = Pacer(requests_per_minute / 60.0, burst=1)
        self._marketplacer = marketplacer
        self._marketplacer_headers = {"marketplacer-api-key": marketplacer_key}
        self._channel_pacer = Pacer(rate, burst=1)
        self._batch = batch
        self.rounds = 0

    async def _pull(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        page, last = 1, 1
        while page <= last:
            await self._keycrm_pacer.acquire()
            async with self._session.get(
                f"{self._keycrm}/offers/stocks",
                params={"limit": "50", "page": str(page)},
                headers=self._keycrm_headers,
            ) as response:
                response.raise_for_status()
                body = orjson.loads(await response.read())
            for row in body["data"]:
                if row["sku"]:
                    available = math.floor(row["quantity"] - row["reserve"])
                    counts[variant_id(row["id"])] = max(0, available)
            last = body["last_page"]
            page += 1
        return counts

    async def _push(self, counts: dict[str, int]) -> None:
        items = list(counts.items())
        for start in range(0, len(items), self._batch):
            chunk = items[start : start + self._batch]
            names = [f"i{n}" for n in range(len(chunk))]
            variables = ", ".join(f"${n}: VariantUpdateMutationInput!" for n in names)
            fields = " ".join(f"{n}: variantUpdate(input: ${n}) {{ {_SELECTION} }}" for n in names)
            document = {
                "query": f"mutation Naive({variables}) {{ {fields} }}",
                "variables": {
                    n: {"variantId": variant, "attributes": {"countOnHand": count}}
                    for n, (variant, count) in zip(names, chunk, strict=True)
                },
            }
            await self._channel_pacer.acquire()
            async with self._session.post(
                f"{self._marketplacer}/graphql", json=document, headers=self._marketplacer_headers
            ) as response:
                response.raise_for_status()
                await response.read()

    async def run(self) -> None:
        """Rounds back to back (an interval of zero: the most the naive way can do)."""
        while True:
            await self._push(await self._pull())
            self.rounds += 1
