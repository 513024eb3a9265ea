"""Fake keyCRM and channel APIs that behave like the real ones, for `stocksync demo` and tests.

Each fake checks what the real API checks (auth, parameters, body shape), answers with the
documented bodies, and can be told to misbehave: 429 with Retry-After, 5xx, 401, slowness,
malformed bodies, per-item failures.
"""

from daemon.simulator.inventory_api import FakeInventoryApi
from daemon.simulator.keycrm import FakeKeycrm, FakeOffer
from daemon.simulator.klump import FakeKlump
from daemon.simulator.marketplacer import FakeMarketplacer, variant_id
from daemon.simulator.ordergroove import FakeOrdergroove

__all__ = [
    "FakeInventoryApi",
    "FakeKeycrm",
    "FakeKlump",
    "FakeMarketplacer",
    "FakeOffer",
    "FakeOrdergroove",
    "variant_id",
]
