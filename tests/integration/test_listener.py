"""The listener facing hostile clients: malformed requests, odd credentials, slow ones, EMFILE."""

from __future__ import annotations

import errno
import gzip
import io
import logging
import os
import sys
import textwrap
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
import pytest
import structlog
from aiohttp import web
from anyio.abc import ByteStream, Process, SocketStream
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from daemon.config.settings import secret_values
from daemon.core.telemetry import Metrics
from daemon.shell.daemon import Daemon
from daemon.shell.http import MAX_SKU_LENGTH, build_app
from daemon.shell.listener import Listener, _FdExhaustion
from daemon.shell.logs import configure_logging
from daemon.shell.request_body import read_request_body
from tests.conftest import World, eventually, running

pytestmark = pytest.mark.anyio

WEBHOOK = "wh-listener-token-0123"
ADMIN = "ad-listener-token-0123"


class Quiet:
    """A controller with nothing behind it; records the webhooks it is given."""

    def __init__(self) -> None:
        self.metrics = Metrics(CollectorRegistry(), "test")
        self.hooks: list[list[str]] = []

    async def refresh_metrics(self) -> None: ...

    async def readiness(self) -> str | None:
        return None

    def readiness_note(self) -> str | None:
        return None

    async def status(self, merchant: str | None = None) -> dict[str, Any]:
        return {"ok": True}

    async def webhook(self, merchant: str, skus: list[str]) -> None:
        self.hooks.append(skus)

    def resync(self, trigger: str, merchant: str | None = None) -> None: ...


@pytest.fixture
def controller() -> Quiet:
    return Quiet()


async def listen(controller: Quiet, **options: float) -> Listener:
    app = build_app(
        controller,
        webhook_tokens=lambda: {"default": SecretStr(WEBHOOK)},
        admin_token=lambda: SecretStr(ADMIN),
    )
    listener = Listener(app, **options)
    await listener.start("127.0.0.1:0")
    return listener


@pytest.fixture
async def listener(controller: Quiet) -> AsyncIterator[Listener]:
    listener = await listen(controller)
    yield listener
    await listener.close()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(raw)
        return await read_all(stream)


async def read_all(stream: ByteStream) -> bytes:
    received = b""
    with anyio.fail_after(5):
        while True:
            try:
                received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return received


async def test_non_ascii_credentials_are_refused_not_a_crash(listener: Listener) -> None:
    for header in (b"Bearer caf\xc3\xa9", b"Bearer \xff\xfe\x80", b"\xc3\xa9 " + ADMIN.encode()):
        answer = await exchange(
            listener.port,
            b"POST /admin/resync HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: " + header + b"\r\nContent-Length: 0\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 401"), answer
    answer = await exchange(
        listener.port,
        b"POST /webhooks/keycrm/%FF%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: 2\r\n\r\n[]",
    )
    assert answer.startswith(b"HTTP/1.1 404"), answer


async def test_an_overlong_sku_is_a_400_naming_the_item_and_changes_nothing(
    listener: Listener, controller: Quiet
) -> None:
    long = "S" * (MAX_SKU_LENGTH + 1)
    body = orjson.dumps([{"sku": "OK-1"}, {"sku": long}])
    answer = await exchange(
        listener.port,
        f"POST /webhooks/keycrm/{WEBHOOK} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert f"item 1: sku is longer than {MAX_SKU_LENGTH} characters".encode() in answer
    assert controller.hooks == []
    fine = orjson.dumps([{"sku": "S" * MAX_SKU_LENGTH}])
    answer = await exchange(
        listener.port,
        f"POST /webhooks/keycrm/{WEBHOOK} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(fine)}\r\n\r\n".encode()
        + fine,
    )
    assert answer.startswith(b"HTTP/1.1 202"), answer


async def test_a_rebind_that_cannot_bind_keeps_the_old_address(listener: Listener) -> None:
    port = listener.port
    for listen, problem in (
        ("a" * 70 + ".example:80", "is not a valid host name"),
        ("192.0.2.1:80", "ssign"),  # TEST-NET: not an address of this machine
    ):
        with pytest.raises(OSError, match=problem):  # a reload says "daemon.listen: ..."
            await listener.rebind(listen)
    assert listener.port == port
    answer = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")


async def test_a_client_that_never_finishes_its_request_head_is_cut_off(
    controller: Quiet,
) -> None:
    listener = await listen(controller, header_timeout=0.2)
    try:
        # Nothing at all, then a head that trickles in and never ends.
        assert await exchange(listener.port, b"") == b""
        async with await anyio.connect_tcp("127.0.0.1", listener.port) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\n")
            await stream.send(b"Host: x\r\n")
            assert await read_all(stream) == b""
        # A prompt client is served as usual.
        answer = await exchange(
            listener.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        await listener.close()


async def test_an_idle_keep_alive_connection_is_closed(controller: Quiet) -> None:
    listener = await listen(controller, keepalive_timeout=0.2)
    try:
        async with await anyio.connect_tcp("127.0.0.1", listener.port) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await read_all(stream)  # answered, then closed once idle
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok\n")
    finally:
        await listener.close()


async def test_a_second_request_head_that_trickles_is_cut_at_the_keep_alive_deadline(
    controller: Quiet,
) -> None:
    listener = await listen(controller, keepalive_timeout=0.3)
    try:
        async with await anyio.connect_tcp("127.0.0.1", listener.port) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(5):
                first = await stream.receive()
            assert first.startswith(b"HTTP/1.1 200")
            await stream.send(b"GET /healthz HTTP/1.1\r\n")
            with anyio.fail_after(5):
                for n in range(1000):  # one header line every 20 ms, never the end of the head
                    try:
                        await stream.send(b"X-%d: y\r\n" % n)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        break
                    if await read_all_within(stream, 0.02) is None:
                        break
                else:
                    pytest.fail("the trickling client was never cut off")
    finally:
        await listener.close()


async def read_all_within(stream: ByteStream, seconds: float) -> bytes | None:
    """What arrives within `seconds` (b"" if nothing), or None once the peer has closed."""
    with anyio.move_on_after(seconds):
        try:
            return await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    return b""


async def test_a_webhook_body_that_never_arrives_is_a_408(
    listener: Listener, controller: Quiet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("daemon.shell.http.BODY_TIMEOUT", 0.2)
    answer = b""
    async with await anyio.connect_tcp("127.0.0.1", listener.port) as stream:
        await stream.send(
            f"POST /webhooks/keycrm/{WEBHOOK} HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
            "\r\n\r\n[{".encode()
        )
        with anyio.fail_after(5):
            while not answer.endswith(b"}"):
                answer += await stream.receive()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"body not sent within 0.2s" in answer
    assert controller.hooks == []
    rejected = controller.metrics.registry.get_sample_value(
        "stocksync_webhook_events_total", {"outcome": "rejected"}
    )
    assert rejected == 1


async def test_a_malformed_request_carrying_the_token_is_one_scrubbed_line(
    world: World, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    world.keycrm.populate(2)
    await world.add_shop("pos")
    config = world.config()
    logs = io.StringIO()
    configure_logging(fmt="json", level="debug", secrets=secret_values(config), stream=logs)
    caplog.set_level(logging.DEBUG)
    daemon = Daemon(config, handle_signals=False)
    path = f"/webhooks/keycrm/{world.webhook_token}".encode()
    async with running(daemon):
        assert daemon.bound_port is not None
        # The last one is over the request line limit, with the token cut in two by any
        # fixed-length quote of it: no masking of the whole token could catch the halves.
        cut = b"/" * (100 - len(b"POST ") - len(b"/webhooks/keycrm/") - 6)
        for raw in (
            b"POST " + path + b" HTTP/1.1\r\nBad Header\r\n\r\n",
            b"POST " + path + b"\x00 HTTP/1.1\r\n\r\n",
            b"POST " + path + b" HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST " + cut + path + b"?" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n",
        ):
            answer = await exchange(daemon.bound_port, raw)
            assert answer.startswith(b"HTTP/1.0 400"), answer
            assert world.webhook_token[3:9].encode() not in answer  # no part quoted back
    lines = [orjson.loads(line) for line in logs.getvalue().splitlines()]
    bad = [line for line in lines if line["event"] == "http.bad_request"]
    assert [line["status"] for line in bad] == [400, 400, 400, 400]
    assert all("Traceback" not in str(line) for line in bad)
    printed = capfd.readouterr()
    for text in (logs.getvalue(), caplog.text, printed.out, printed.err):
        assert world.webhook_token[3:9] not in text


def test_file_descriptor_exhaustion_is_one_line_a_minute() -> None:
    now = [100.0]
    records = structlog.testing.LogCapture()
    structlog.configure(processors=[records])
    handler = _FdExhaustion(60.0, clock=lambda: now[0])
    emfile = OSError(errno.EMFILE, "Too many open files")
    context = {"message": "socket.accept() out of system resource", "exception": emfile}
    for _ in range(50):
        handler(None, context)  # type: ignore[arg-type]
    now[0] += 61
    handler(None, context)  # type: ignore[arg-type]
    events = [(e["event"], e["suppressed"]) for e in records.entries]
    assert events == [("http.fd_exhausted", 0), ("http.fd_exhausted", 49)]


EMFILE_SERVER = textwrap.dedent(
    """
    import asyncio, os, resource, sys
    from aiohttp import web
    from daemon.shell.listener import Listener
    from daemon.shell.logs import configure_logging

    async def main():
        configure_logging()
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="ok"))
        listener = Listener(app)
        await listener.start("127.0.0.1:0")
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 3, hard))
        print(listener.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await listener.close()
        # A daemon's loop runs on after its listener closes (a reload, the rest of a drain).
        await asyncio.sleep(float(os.environ.get("LINGER", "0")))

    asyncio.run(main())
    """
)


@dataclass
class Exhausted:
    """The EMFILE server, out of descriptors: its process, port, the connections holding them
    and what it has written to stderr so far."""

    process: Process
    port: int
    held: list[SocketStream]
    stderr: bytes = b""


@asynccontextmanager
async def exhausted_server(linger: float = 0.0) -> AsyncIterator[Exhausted]:
    """Start EMFILE_SERVER, use up its descriptors and wait for its one `http.fd_exhausted`."""
    environment = {**os.environ, "LINGER": str(linger)}
    async with await anyio.open_process(
        [sys.executable, "-c", EMFILE_SERVER], stdin=-1, stdout=-1, stderr=-1, env=environment
    ) as process:
        assert process.stdout is not None and process.stdin is not None
        assert process.stderr is not None
        with anyio.fail_after(10):
            port = int((await process.stdout.receive()).decode().strip())
        held = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(12)]
        server = Exhausted(process, port, held)

        async def read_stderr() -> None:
            async for chunk in process.stderr:  # type: ignore[union-attr]
                server.stderr += chunk

        async with anyio.create_task_group() as group:
            group.start_soon(read_stderr)
            await eventually(lambda: b"http.fd_exhausted" in server.stderr)
            yield server
        for stream in held:
            await stream.aclose()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
async def test_running_out_of_file_descriptors_is_quiet_and_recovers() -> None:
    async with exhausted_server() as server:
        for stream in server.held:
            await stream.aclose()
        # Descriptors are free again: the listener answers once more.
        answer = b""
        with anyio.fail_after(10):
            while not answer.startswith(b"HTTP/1.1 200"):
                answer = await exchange(
                    server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
        await server.process.stdin.send(b"stop\n")  # type: ignore[union-attr]
        await server.process.wait()
    assert server.stderr.count(b"http.fd_exhausted") == 1, server.stderr
    assert b"Traceback" not in server.stderr
    assert len(server.stderr) < 2000


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
async def test_closing_while_out_of_file_descriptors_is_quiet() -> None:
    """asyncio retries a failed accept() a second later, on the socket it had: closed by then,
    the retry fails ("Invalid file descriptor: -1"), and that must not be a traceback either."""
    async with exhausted_server(linger=1.5) as server:
        await server.process.stdin.send(b"stop\n")  # type: ignore[union-attr]  # retry pending
        with anyio.fail_after(10):
            assert await server.process.wait() == 0
    assert b"Traceback" not in server.stderr, server.stderr.decode(errors="replace")
    assert b"Invalid file descriptor" not in server.stderr


def webhook_request(body: bytes, *headers: str, chunked: bool = False) -> bytes:
    """A raw webhook request with these extra header lines, its body whole or as one chunk."""
    head = f"POST /webhooks/keycrm/{WEBHOOK} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += "".join(f"{line}\r\n" for line in headers)
    if chunked:
        return (
            f"{head}Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


GOOD = b'[{"sku": "SKU-1", "in_stock": 1}]'


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (webhook_request(b"not gzip at all", "Content-Encoding: gzip"), "not valid gzip"),
        (webhook_request(b"\x00" * 40, "Content-Encoding: deflate"), "not valid deflate"),
        (
            webhook_request(b"not gzip either", "Content-Encoding: gzip", chunked=True),
            "not valid gzip",
        ),
        (  # a valid start, then garbage: the error comes while the route reads
            webhook_request(gzip.compress(GOOD * 50)[:20] + b"\0" * 200, "Content-Encoding: gzip"),
            "not valid gzip",
        ),
        (  # JSON is UTF-8: a body in another charset is not JSON, whatever the header says
            webhook_request(
                '[{"sku": "caf\u00e9"}]'.encode("latin-1"),
                "Content-Type: application/json; charset=latin-1",
            ),
            "not JSON",
        ),
        (webhook_request(b"x", "Content-Encoding: br"), "Content-Encoding"),  # no brotli here
        (webhook_request(zlib.compress(GOOD)[:-4], "Content-Encoding: deflate"), "decode"),
    ],
    ids=[
        "gzip",
        "deflate",
        "gzip-chunked",
        "gzip-corrupt-midway",
        "latin-1",
        "br",
        "deflate-truncated",
    ],
)
async def test_a_body_that_does_not_decode_is_a_400_and_changes_nothing(
    listener: Listener, controller: Quiet, raw: bytes, problem: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        answer = await exchange(listener.port, raw)
        fine = await exchange(
            listener.port, webhook_request(gzip.compress(GOOD), "Content-Encoding: gzip")
        )
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer
    assert problem.encode() in answer.partition(b"\r\n\r\n")[2], answer
    assert fine.startswith(b"HTTP/1.1 202"), fine  # the listener is unharmed
    assert controller.hooks == [["SKU-1"]]
    assert [e for e in logs if e["log_level"] == "error" or "exc_info" in e] == []


async def test_a_client_leaving_mid_body_is_one_debug_line(
    listener: Listener, controller: Quiet
) -> None:
    cut = [
        webhook_request(GOOD, "Expect: 100-continue")[:-10],
        webhook_request(GOOD, "Expect: 100-continue", chunked=True)[:-12],
        webhook_request(gzip.compress(GOOD * 50), "Expect: 100-continue", "Content-Encoding: gzip")[
            :-20
        ],
    ]
    with structlog.testing.capture_logs() as logs:
        for count, raw in enumerate(cut, start=1):
            async with await anyio.connect_tcp("127.0.0.1", listener.port) as stream:
                await stream.send(raw)
                with anyio.fail_after(5):  # the route is reading the body: leave now
                    assert b"100 Continue" in await stream.receive()
            await eventually(
                lambda n=count: [e["event"] for e in logs].count("http.client_gone") == n
            )  # type: ignore[misc]
    assert controller.hooks == []
    assert [e for e in logs if e["log_level"] != "debug" or "exc_info" in e] == []
    assert [e["event"] for e in logs if e["event"] != "http.request"] == ["http.client_gone"] * 3


async def test_any_route_reading_a_body_that_breaks_is_a_400_without_a_traceback() -> None:
    """The listener's net under routes that read a body themselves (not through
    `read_request_body`): aiohttp's payload error is the client's fault, never a 500."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/echo", echo)
    listener = Listener(app)
    await listener.start("127.0.0.1:0")
    try:
        with structlog.testing.capture_logs() as logs:
            answer = await exchange(
                listener.port,
                b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nnope!",
            )
    finally:
        await listener.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert answer.endswith(
        b"body does not decode as its Content-Encoding says, or that encoding is not supported"
    )
    assert [e for e in logs if e["log_level"] != "debug" or "exc_info" in e] == []


async def test_a_handler_cancelled_while_reading_is_one_debug_line() -> None:
    """With aiohttp's handler cancellation on, a client that leaves cancels the read itself."""
    reached: list[str] = []

    async def take(request: web.Request) -> web.Response:
        try:
            await read_request_body(request, within=5)
        finally:
            reached.append("read")
        return web.Response(text="never")

    app = web.Application()
    app.router.add_post("/take", take)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with structlog.testing.capture_logs() as logs:
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(
                    b"POST /take HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 100\r\n\r\n[{"
                )
                with anyio.fail_after(5):
                    assert b"100 Continue" in await stream.receive()
            await eventually(lambda: reached == ["read"])
    finally:
        await runner.cleanup()
    assert [(e["event"], e["log_level"]) for e in logs] == [("http.client_gone", "debug")]
    assert (logs[0]["route"], logs[0]["problem"]) == ("/take", "cancelled while reading")
