"""The HTTP app on its own: a route that fails unexpectedly is a 500, logged with its route."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import structlog
from prometheus_client import CollectorRegistry

from daemon.core.telemetry import Metrics
from daemon.shell.http import build_app
from tests.conftest import Serve

pytestmark = pytest.mark.anyio


class Broken:
    metrics = Metrics(CollectorRegistry(), "test")

    async def refresh_metrics(self) -> None: ...

    async def readiness(self) -> str | None:
        return None

    def readiness_note(self) -> str | None:
        return None

    async def status(self, merchant: str | None = None) -> dict[str, Any]:
        raise RuntimeError("store went away")

    async def webhook(self, merchant: str, skus: list[str]) -> None: ...

    def resync(self, trigger: str, merchant: str | None = None) -> None: ...


async def test_an_unexpected_error_is_a_500_and_still_logged(serve: Serve) -> None:
    base = await serve(build_app(Broken(), webhook_tokens=dict, admin_token=lambda: None))
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession() as session, session.get(f"{base}/status") as r:
            assert r.status == 500
        async with aiohttp.ClientSession() as session, session.get(f"{base}/nope") as r:
            assert r.status == 404
    requests = [(e["route"], e["status"]) for e in logs if e["event"] == "http.request"]
    assert requests == [("/status", 500), ("(unmatched)", 404)]
