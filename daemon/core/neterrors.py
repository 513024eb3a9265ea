"""A failed request in words an operator can act on: which host, and what the OS or TLS said.

aiohttp's exceptions print as their class name (`ClientConnectorError`) or as a long repr that
names the connection key; neither tells an on-call person whether DNS, the firewall or a
certificate is at fault. `describe_network_error` turns them into `host:port: connection refused`,
`host:port: name not resolved`, `host:port: TLS: certificate expired`.
"""

from __future__ import annotations

import errno
import socket
import ssl
from urllib.parse import urlsplit

import aiohttp

__all__ = ["describe", "describe_network_error"]

_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EPIPE: "connection closed",
}
_TLS_TEXT = {
    "certificate has expired": "certificate expired",
    "self-signed certificate": "self-signed certificate",
    "self signed certificate": "self-signed certificate",
    "unable to get local issuer certificate": "certificate issuer unknown",
}


def _tls(error: BaseException | None) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        message = error.verify_message or str(error)
        if "Hostname mismatch" in message or "doesn't match" in message:
            return "TLS: certificate is for another host"
        for needle, text in _TLS_TEXT.items():
            if needle in message:
                return f"TLS: {text}"
        return f"TLS: {message}"
    if isinstance(error, ssl.SSLError):
        return "TLS: " + str(error.reason or error).lower().replace("_", " ")
    return "TLS handshake failed"


def _os_reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return "name not resolved"
    if isinstance(error, ssl.SSLError):
        return _tls(error)
    if error.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[error.errno]
    return (error.strerror or type(error).__name__).lower()


def describe_network_error(exc: BaseException) -> str:
    """`host:port: reason` for a request that got no answer (no secret: no path, no headers)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        where = f"{exc.host}:{exc.port}"
        return f"{where}: {_tls(exc.certificate_error)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"{exc.host}:{exc.port}: name not resolved"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # ClientConnectorSSLError is one too; its os_error is the ssl.SSLError.
        return f"{exc.host}:{exc.port}: {_os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return "no answer in time (timeout)"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(exc, aiohttp.ClientOSError):
        return _os_reason(exc)
    if isinstance(exc, OSError):
        return _os_reason(exc)
    return type(exc).__name__


def describe(exc: BaseException, url: str, timeout: float | None = None) -> str:
    """`host:port: reason` for a request to `url`, also where the exception names no host."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe_network_error(exc)  # names its host and port itself
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError) and timeout is not None:
        return f"{where}: no answer within {timeout:g}s"
    return f"{where}: {describe_network_error(exc)}"
