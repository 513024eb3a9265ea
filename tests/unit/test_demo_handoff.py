"""The demo's heartbeat: one line now and then, what the shop floor did and what is pending."""

from __future__ import annotations

import io
from typing import Any

import anyio
import pytest

from daemon.commands.demo_handoff import Tally, heartbeat

pytestmark = pytest.mark.anyio


async def test_the_heartbeat_says_what_happened_and_what_each_channel_owes() -> None:
    out = io.StringIO()

    async def status() -> dict[str, Any]:
        return {"channels": {"shop-pos": {"pending": 4}, "klump": {"pending": 0}}}

    with anyio.move_on_after(0.2):
        await heartbeat(Tally(orders=3, restocks=1, hand_edits=2), status, out, every=0.05)
    lines = out.getvalue().splitlines()
    assert lines, "no heartbeat"
    assert lines[0].endswith(
        "shop floor: 3 orders, 1 restocks, 2 hand edits; pending: shop-pos 4, klump 0  "
        "(Enter: the lines to copy)"
    )
