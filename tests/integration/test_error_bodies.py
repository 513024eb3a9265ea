"""The daemon against a channel that answers 200 with an error in the body (issue 17, point 2).

The Inventory Update API answered `200 {"success": false, "error": "database is locked"}`: 10 of
10 updates were lost while /status showed nothing pending and the metrics counted them `ok`.
Here the same answer keeps every item pending and retried, visible in /status and the metrics,
until the channel recovers; then everything lands.
"""

from __future__ import annotations

import aiohttp
import pytest

from daemon.send import dispatch
from daemon.shell.daemon import Daemon
from tests.conftest import World, eventually, idle, running
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


def pushes(daemon: Daemon, outcome: str) -> float:
    sample = daemon.metrics.registry.get_sample_value(
        "stocksync_push_requests_total",
        {"merchant": "default", "channel": "pos", "outcome": outcome},
    )
    return sample or 0.0


async def test_a_200_saying_the_update_failed_is_retried_until_the_channel_recovers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "backoff_delay", lambda attempt: 0.1)
    world.keycrm.populate(10)
    pos = await world.add_shop("pos")
    pos.faults.fail_in_body("database is locked", times=10_000)
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon), aiohttp.ClientSession() as session:
        # every item tried at least twice: the first failure was not taken as done
        await eventually(lambda: pushes(daemon, "retry") >= 20, what="each item retried")
        async with session.get(f"http://127.0.0.1:{daemon.bound_port}/status") as r:
            status = (await r.json())["channels"]["pos"]
        assert pos.stock == {}
        assert pushes(daemon, "ok") == 0
        assert status["pending"] == 10
        assert status["acknowledged"] == 0
        assert "database is locked" in (status["last_error"] or "")
        assert status["up"] is True  # about these requests, not the channel: no pause

        pos.faults.clear()  # the channel recovers
        await eventually(lambda: in_sync(world) and idle(daemon), what="every item landed")
        async with session.get(f"http://127.0.0.1:{daemon.bound_port}/status") as r:
            status = (await r.json())["channels"]["pos"]
    assert status["pending"] == 0
    assert status["acknowledged"] == 10
    assert pushes(daemon, "ok") == 10
