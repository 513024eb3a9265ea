"""deploy/openapi.yaml against a live daemon (fakes behind it): no 5xx, every answer as documented.

schemathesis calls the daemon synchronously, so the daemon and its fakes run on their own event
loop in a thread for the module. Half the webhook cases carry the real token, so the body
parser is reached, not only the 404 for an unknown token; the admin route gets the real token
through the security scheme.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings

from adapters import ADAPTERS
from daemon.config.settings import load_config
from daemon.shell.daemon import Daemon
from daemon.simulator import FakeInventoryApi, FakeKeycrm

SPEC = Path(__file__).parents[2] / "deploy" / "openapi.yaml"
schema = schemathesis.openapi.from_path(SPEC)


@dataclass
class Live:
    url: str
    webhook_token: str
    admin_token: str


async def _serve(app: web.Application, runners: list[web.AppRunner]) -> str:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    runners.append(runner)
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("openapi")
    tokens = {n: f"{n.lower()}-{secrets.token_hex(8)}" for n in ("KEY", "HOOK", "ADMIN", "POS")}
    started = threading.Event()
    stop: list[Daemon] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        runners: list[web.AppRunner] = []
        keycrm = FakeKeycrm(tokens["KEY"])
        keycrm.populate(5)
        keycrm_url = await _serve(keycrm.app(), runners)
        pos_url = await _serve(FakeInventoryApi(tokens["POS"]).app(), runners)
        path = folder / "stocksync.toml"
        path.write_text(
            f"""
[daemon]
state = "{folder / "state.db"}"
listen = "127.0.0.1:0"
shutdown_timeout = "2s"
admin_token_file = "{folder / "admin"}"
[keycrm]
base_url = "{keycrm_url}/v1"
api_key_file = "{folder / "key"}"
webhook_token_file = "{folder / "hook"}"
requests_per_minute = 6000
[sync]
debounce = "0s"
max_delay = "1s"
[[channel]]
name = "pos"
type = "inventory_api"
base_url = "{pos_url}"
token_file = "{folder / "pos"}"
store = "S1"
rate_limit = "1000/s"
""",
            encoding="utf-8",
        )
        for name, file in (("KEY", "key"), ("HOOK", "hook"), ("ADMIN", "admin"), ("POS", "pos")):
            (folder / file).write_text(tokens[name], encoding="utf-8")
        daemon = Daemon(load_config(path, ADAPTERS), handle_signals=False)
        stop.append(daemon)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(daemon.run())
                await daemon.started.wait()
                started.set()
        finally:
            for runner in runners:
                await runner.cleanup()

    def thread() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by the fixture
            failure.append(exc)
            started.set()

    worker = threading.Thread(target=thread, daemon=True)
    worker.start()
    assert started.wait(30), "the daemon did not start"
    assert not failure, failure
    daemon = stop[0]
    yield Live(f"http://127.0.0.1:{daemon.bound_port}", tokens["HOOK"], tokens["ADMIN"])
    loop.call_soon_threadsafe(daemon.stop)
    worker.join(30)
    loop.close()
    assert not failure, failure


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_route_answers_as_documented(case: schemathesis.Case, live: Live) -> None:
    if "token" in (case.path_parameters or {}) and zlib.crc32(repr(case.body).encode()) % 2:
        case.path_parameters = {**case.path_parameters, "token": live.webhook_token}
    headers = {}
    admin = ("/admin/resync", "/admin/guard/release")
    if case.operation.path in admin and zlib.crc32(repr(case.headers).encode()) % 2:
        headers["Authorization"] = f"Bearer {live.admin_token}"
    case.call_and_validate(base_url=live.url, headers=headers)


def test_the_document_lists_exactly_the_routes_the_app_serves() -> None:
    from prometheus_client import CollectorRegistry
    from pydantic import SecretStr

    from daemon.core.telemetry import Metrics
    from daemon.shell.http import build_app

    class Nothing:
        metrics = Metrics(CollectorRegistry(), "test")

    app = build_app(
        Nothing(),  # type: ignore[arg-type]
        webhook_tokens=lambda: {"default": SecretStr("x" * 8)},
        admin_token=lambda: SecretStr("y" * 8),
    )
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, operations in schema.raw_schema["paths"].items()
        for method in operations
    }
    assert served == documented
