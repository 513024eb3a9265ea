"""Channel adapters, one module each. `ADAPTERS` is the explicit registry: type name to spec.

Adapters import only daemon's contract modules (models, errors, channel, config value types,
secrets), never the pipeline; inside `daemon/`, only the CLI imports this registry.
"""

from __future__ import annotations

from collections.abc import Mapping

from adapters import inventory_api, klump, marketplacer, ordergroove
from daemon.contract import ChannelSpec

__all__ = ["ADAPTERS"]

ADAPTERS: Mapping[str, ChannelSpec] = {
    "inventory_api": inventory_api.SPEC,
    "klump": klump.SPEC,
    "marketplacer": marketplacer.SPEC,
    "ordergroove": ordergroove.SPEC,
}
