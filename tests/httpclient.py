"""A minimal async HTTP/1.1 client for tests (h11 over trio), one request per connection."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import h11
import orjson
import trio


async def request(
    method: str,
    url: str,
    *,
    json: Any = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if json is not None:
        body = orjson.dumps(json)
    hdrs = [("host", f"{host}:{port}"), ("connection", "close")]
    hdrs += list((headers or {}).items())
    if body is not None:
        hdrs.append(("content-length", str(len(body))))
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        data = conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body is not None:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        status = 0
        resp_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                resp_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return status, resp_headers, b"".join(chunks)


async def get_json(url: str, **kw: Any) -> tuple[int, Any]:
    status, _headers, body = await request("GET", url, **kw)
    return status, orjson.loads(body)
