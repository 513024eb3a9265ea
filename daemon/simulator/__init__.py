"""Fake keyCRM and channel APIs that behave like the real ones, for `stocksync demo` and tests.

Each fake checks what the real API checks (auth, parameters, body shape), answers with the
documented bodies, and can be told to misbehave: 429 with Retry-After, 5xx, 401, slowness,
malformed bodies, per-item failures.
"""

from daemon.simulator.inventory_api import FakeInventoryApi
from daemon.simulator.keycrm import FakeKeycrm, FakeOffer

__all__ = ["FakeInventoryApi", "FakeKeycrm", "FakeOffer"]
