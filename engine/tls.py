"""Transport security of the gateway: TLS (``https://`` and ``wss://``) and per-IP connection caps.

TLS: with ``tls_cert_file`` and ``tls_key_file`` set, every TCP listener of the gateway is
wrapped in a ``trio.SSLListener``; HTTP, the WebSocket upgrade and the WebSocket itself then run
over the ``trio.SSLStream`` unchanged (``engine.gateway.conn.WsConn`` writes non-socket streams
with an awaited ``send_all`` from its drain task, so one writer per socket still holds). The
context accepts TLS 1.2 and 1.3 only, offers ALPN ``http/1.1``, and uses Python's default
(secure) cipher choice. A client that never finishes its handshake is dropped by the HTTP
layer's idle timeout like one that never sends a request.

Connections per IP: ``ConnectionLimiter`` counts the open connections of each client address;
past ``max_conns_per_ip`` a new connection gets ``429 Too Many Requests`` and is closed before
any request is read, so one address cannot hold every socket of a gateway.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from typing import Final

import trio

from engine.errors import ConfigError

TOO_MANY: Final = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    b"content-length: 80\r\nretry-after: 5\r\nconnection: close\r\n\r\n"
    b'{"error":{"code":"rate_limited","message":"too many connections from this address"}}'
)


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side TLS context for the gateway; raises ``ConfigError`` for unusable files."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert_file} / {key_file}: {exc}") from None
    return ctx


def wrap_listeners(
    listeners: Sequence[trio.SocketListener], ctx: ssl.SSLContext
) -> list[trio.SSLListener[trio.SocketStream]]:
    # https_compatible: HTTP clients often close without a TLS close_notify; that is not an error.
    return [trio.SSLListener(listener, ctx, https_compatible=True) for listener in listeners]


def peer_address(stream: trio.abc.Stream) -> str:
    """The client's IP address ("" when the stream is not a socket, e.g. in tests)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            name = stream.socket.getpeername()
        except OSError:
            return ""
        if stream.socket.family in (socket.AF_INET, socket.AF_INET6) and name:
            return str(name[0])
    return ""


class ConnectionLimiter:
    """Open connections per client address (``limit`` 0 = unlimited)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}
        self.refused = 0

    def acquire(self, address: str) -> bool:
        if not self.limit or not address:
            return True
        count = self.open.get(address, 0)
        if count >= self.limit:
            self.refused += 1
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        if not self.limit or not address:
            return
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)
