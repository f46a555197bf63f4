"""Gateway discovery: `GET /v1/dispatch?room=...` over a minimal h11 client, and URL helpers."""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import h11
import orjson
import trio

from .errors import ConnectError

_MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class Dispatch:
    """The answer of `/v1/dispatch`: gateway WebSocket URLs with weights."""

    gateways: tuple[tuple[str, int], ...]
    heartbeat_ms: int | None = None

    def pick(self, rng: random.Random) -> str:
        urls = [u for u, _ in self.gateways]
        weights = [max(w, 0) for _, w in self.gateways]
        if sum(weights) <= 0:
            return rng.choice(urls)
        return rng.choices(urls, weights=weights, k=1)[0]


def is_http_url(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


async def http_get_json(url: str, *, ssl_context: ssl.SSLContext | None = None) -> Any:
    """GET `url` (http or https) and parse its JSON body. Raises ConnectError on any failure,
    including a non-200 status."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
        if tls:
            ctx = ssl_context or ssl.create_default_context()
            stream = trio.SSLStream(stream, ctx, server_hostname=parts.hostname)
        async with stream:
            return await _exchange(stream, host_header, target, url)
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise ConnectError(f"GET {url} failed: {exc!r}") from exc


async def _exchange(stream: trio.abc.Stream, host: str, target: str, url: str) -> Any:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target,
        headers=[("Host", host), ("Accept", "application/json"), ("Connection", "close")],
    )
    for out in (request, h11.EndOfMessage()):
        data = conn.send(out)
        if data:
            await stream.send_all(data)
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise ConnectError(f"GET {url}: response body over {_MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if status != 200:
        raise ConnectError(f"GET {url}: HTTP {status}: {bytes(body[:200])!r}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ConnectError(f"GET {url}: body is not JSON") from exc


def dispatch_url(base: str, room: str | None) -> str:
    parts = urlsplit(base)
    prefix = parts.path.rstrip("/")
    query = f"?room={quote(room, safe='')}" if room else ""
    return f"{parts.scheme}://{parts.netloc}{prefix}/v1/dispatch{query}"


async def dispatch(
    base: str, room: str | None, *, ssl_context: ssl.SSLContext | None = None
) -> Dispatch:
    """Ask the HTTP API at `base` which gateways to use (for `room`, when given)."""
    url = dispatch_url(base, room)
    data = await http_get_json(url, ssl_context=ssl_context)
    gateways: list[tuple[str, int]] = []
    raw = data.get("gateways") if isinstance(data, dict) else None
    for g in raw if isinstance(raw, list) else []:
        if isinstance(g, dict) and isinstance(g.get("url"), str):
            weight = g.get("weight", 1)
            gateways.append((g["url"], weight if type(weight) is int else 1))
    if not gateways:
        raise ConnectError(f"GET {url}: no gateways in the answer")
    hb = data.get("heartbeat_ms")
    return Dispatch(tuple(gateways), hb if type(hb) is int else None)
