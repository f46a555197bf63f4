"""HTTP/1.1 on each accepted connection (h11), handing WebSocket upgrades of ``/ws`` over.

After the 101 response the h11 machinery is dropped: the WebSocket side needs only wsproto's
frame parser, which keeps per-connection memory small.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from engine.gateway.conn import WsConn
from engine.gateway.ws_session import Session
from engine.tls import TOO_MANY, ConnectionLimiter, peer_address

if TYPE_CHECKING:
    from engine.gateway.app import Gateway

log = logging.getLogger("danmaku.http")

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_BODY_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 30.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    peer: str = ""  # the client's IP address ("" when unknown)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()


def _is_upgrade(req: Request) -> bool:
    return (
        req.headers.get("upgrade", "").lower() == "websocket"
        and "upgrade" in req.headers.get("connection", "").lower()
    )


async def serve_connection(gw: Gateway, stream: trio.abc.Stream) -> None:
    """Serve one accepted connection until it closes or upgrades."""
    from engine.gateway.http_api import route

    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    peer = peer_address(stream)
    try:
        while True:
            req = await _read_request(conn, stream)
            if req is None:
                return
            req.peer = peer
            if req.path == "/ws" and req.method == "GET":
                trailing = await _handshake(gw, conn, stream, req)
                if trailing is None:
                    return
                # Keep nothing of the HTTP layer for the life of the WebSocket.
                del conn, req
                await _run_websocket(gw, stream, trailing)
                return
            resp = await route(gw, req)
            await _send_response(conn, stream, resp, head=req.method == "HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream) -> Request | None:
    req: h11.Request | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            await _send_plain_error(conn, stream, 400, "malformed request")
            return None
        if event is h11.NEED_DATA:
            with trio.move_on_after(IDLE_TIMEOUT_S) as scope:
                data = await stream.receive_some(65536)
            if scope.cancelled_caught:
                return None
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            req = event
            if _upgrade_headers(event):
                break
            continue
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY_BYTES:
                await _send_plain_error(conn, stream, 413, "body too large")
                return None
            chunks.append(event.data)
            continue
        if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            break
        return None  # ConnectionClosed and the rest
    if req is None:
        return None
    target = req.target.decode("latin-1")
    parts = urlsplit(target)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
    return Request(
        method=req.method.decode("ascii", "replace"),
        path=parts.path,
        query=parse_qs(parts.query),
        headers=headers,
        body=b"".join(chunks),
    )


def _upgrade_headers(event: h11.Request) -> bool:
    return any(k == b"upgrade" and v.lower() == b"websocket" for k, v in event.headers)


async def _handshake(
    gw: Gateway, conn: h11.Connection, stream: trio.abc.Stream, req: Request
) -> bytes | None:
    """Answer the upgrade (101) or refuse it; the bytes the client sent after its request."""
    key = req.headers.get("sec-websocket-key", "")
    if not _is_upgrade(req) or not key or req.headers.get("sec-websocket-version") != "13":
        await _send_plain_error(conn, stream, 400, "a WebSocket upgrade is expected at /ws")
        return None
    if not gw.origin_allowed(req.headers.get("origin")):
        await _send_plain_error(conn, stream, 403, "origin not allowed")
        return None
    trailing, _closed = conn.trailing_data
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + websocket_accept(key).encode() + b"\r\n\r\n"
    )
    return bytes(trailing)


async def _run_websocket(gw: Gateway, stream: trio.abc.Stream, trailing: bytes) -> None:
    assert gw.nursery is not None
    ws = WsConn(
        stream,
        gw.nursery,
        max_message_bytes=gw.settings.max_frame_bytes,
        max_pending_bytes=gw.settings.max_pending_bytes,
        trailing_data=trailing,
    )
    await Session(gw, ws).run()


async def _send_response(
    conn: h11.Connection, stream: trio.abc.Stream, resp: Response, *, head: bool = False
) -> None:
    headers = [("content-type", resp.content_type), ("content-length", str(len(resp.body)))]
    if not any(name.lower() == "cache-control" for name, _ in resp.headers):
        headers.append(("cache-control", "no-store"))  # unless the route chose its own (web.py)
    headers += resp.headers
    data = conn.send(h11.Response(status_code=resp.status, headers=headers))
    # A HEAD answer has the headers of the GET answer and no body (h11 refuses one).
    body = conn.send(h11.Data(data=resp.body)) if resp.body and not head else b""
    end = conn.send(h11.EndOfMessage())
    await stream.send_all((data or b"") + (body or b"") + (end or b""))


async def _send_plain_error(
    conn: h11.Connection, stream: trio.abc.Stream, status: int, message: str
) -> None:
    from engine.gateway.http_api import error_response

    if conn.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
        return
    with contextlib.suppress(h11.LocalProtocolError):
        await _send_response(conn, stream, error_response(status, "bad_request", message))


async def serve_listeners(
    gw: Gateway,
    listeners: Sequence[trio.SocketListener | trio.SSLListener[trio.SocketStream]],
    *,
    accepting: trio.CancelScope | None = None,
    closed: trio.Event | None = None,
    task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve plain or TLS listeners (engine.tls), with the per-IP connection cap.

    Cancelling ``accepting`` stops taking new connections and closes the listeners (new
    connects are refused: clients go elsewhere; then ``closed`` is set) while the connections
    already served go on: the first step of a graceful shutdown."""
    sndbuf = gw.settings.socket_sndbuf_bytes
    limiter = ConnectionLimiter(gw.settings.max_conns_per_ip)

    async def handler(stream: trio.abc.Stream) -> None:
        sock = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        if sndbuf and isinstance(sock, trio.SocketStream):
            # caps the kernel's memory per viewer; 0 leaves the kernel's autotuning
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        address = peer_address(stream)
        if not limiter.acquire(address):
            with trio.move_on_after(5):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                         OSError):
                    await stream.send_all(TOO_MANY)
            await trio.aclose_forcefully(stream)
            return
        try:
            await serve_connection(gw, stream)
        finally:
            limiter.release(address)

    async with trio.open_nursery() as handlers:
        with accepting or trio.CancelScope():
            await trio.serve_listeners(
                handler, list(listeners), handler_nursery=handlers, task_status=task_status
            )
        try:
            for listener in listeners:
                await listener.aclose()
        finally:
            if closed is not None:
                closed.set()


def query_int(req: Request, name: str, default: int, lo: int, hi: int) -> int | None:
    """An integer query parameter within [lo, hi]; None when present but invalid."""
    values = req.query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        return None
    return value if lo <= value <= hi else None
