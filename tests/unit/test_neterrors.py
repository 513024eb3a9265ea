"""Network failures named by host and OS reason, as an on-call person needs them."""

from __future__ import annotations

import socket
import ssl

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from daemon.core.neterrors import describe_network_error

pytestmark = pytest.mark.anyio


def key(host: str = "shop.example.com", port: int = 443) -> ConnectionKey:
    return ConnectionKey(host, port, True, True, None, None, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refused_connection_names_host_port_and_reason() -> None:
    port = free_port()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError) as caught:
            await session.get(f"http://127.0.0.1:{port}/x")
    assert describe_network_error(caught.value) == f"127.0.0.1:{port}: connection refused"


def test_an_unknown_name() -> None:
    exc = aiohttp.ClientConnectorDNSError(key(), socket.gaierror(-2, "Name or service not known"))
    assert describe_network_error(exc) == "shop.example.com:443: name not resolved"


def test_an_expired_certificate() -> None:
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "certificate has expired"
    exc = aiohttp.ClientConnectorCertificateError(key(), cert)
    assert describe_network_error(exc) == "shop.example.com:443: TLS: certificate expired"


def test_a_certificate_for_another_host() -> None:
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "Hostname mismatch, certificate is not valid for 'x'."
    exc = aiohttp.ClientConnectorCertificateError(key(), cert)
    assert describe_network_error(exc).endswith("TLS: certificate is for another host")


def test_timeouts_and_disconnects() -> None:
    assert "timeout" in describe_network_error(TimeoutError())
    assert "closed the connection" in describe_network_error(aiohttp.ServerDisconnectedError())


async def test_a_channel_request_that_gets_no_answer_names_host_and_reason() -> None:
    from adapters._http import send
    from daemon.core.errors import ChannelRetryable

    port = free_port()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ChannelRetryable) as caught:
            await send(
                session,
                "POST",
                f"http://127.0.0.1:{port}/api",
                channel="klump",
                payload={},
                headers={},
                timeout=aiohttp.ClientTimeout(5),
            )
    assert str(caught.value) == f"klump: no answer: 127.0.0.1:{port}: connection refused"
