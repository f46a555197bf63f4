"""Property test of the gateway's HTTP handling: whatever bytes a client sends, the gateway answers
with one well-formed HTTP response (or closes), and nothing escapes as a traceback.

Each example drives ``engine.gateway.http_server.serve_connection`` over an in-memory stream
pair, against a real gateway (running in a background thread with its own trio loop, talking to
a real redis-server), so every route is reachable: health, metrics, dispatch, rooms, polls,
sends, login, the admin API and the WebSocket upgrade.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.embedded_redis import RedisProcess
from engine.gateway.http_server import serve_connection
from tests.stack import running_stack

pytestmark = pytest.mark.redis

FUZZ = settings(
    max_examples=250, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class LiveGateway:
    def __init__(self, url: str) -> None:
        self.url = url
        self.gw: Any = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.stop: trio.Event | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)
        self.bearer = ""

    async def _main(self) -> None:
        async with running_stack([self.url]) as st:
            self.gw = st.gateways[0]
            self.bearer = st.token("fuzzer", role="admin")
            self.token = trio.lowlevel.current_trio_token()
            self.stop = trio.Event()
            self.ready.set()
            await self.stop.wait()

    def run(self, data: bytes) -> bytes:
        assert self.token is not None
        return trio.from_thread.run(self._exchange, data, trio_token=self.token)

    async def _exchange(self, data: bytes) -> bytes:
        server, client = trio.testing.memory_stream_pair()
        out = bytearray()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                # serve_connection must return (or end by our EOF) without raising
                nursery.start_soon(serve_connection, self.gw, server)
                await client.send_all(data)
                await client.send_stream.aclose()  # EOF: nothing more is coming
                while chunk := await client.receive_some(65536):
                    out += chunk
        return bytes(out)


@pytest.fixture(scope="module")
def live(redis_factory: Any) -> Iterator[LiveGateway]:
    server: RedisProcess = redis_factory.start()
    gateway = LiveGateway(server.url)
    gateway.thread.start()
    assert gateway.ready.wait(30), "the gateway did not start"
    try:
        yield gateway
    finally:
        assert gateway.token is not None and gateway.stop is not None
        trio.from_thread.run_sync(gateway.stop.set, trio_token=gateway.token)
        gateway.thread.join(30)


def check_answer(data: bytes) -> int | None:
    """The status of the first response; None when the gateway closed without answering."""
    if not data:
        return None
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Response | h11.InformationalResponse), event
    assert 100 <= event.status_code <= 599
    if event.status_code != 101:
        names = {name.lower() for name, _value in event.headers}
        assert b"content-length" in names and b"content-type" in names
    return event.status_code


PATHS = [
    "/healthz", "/metrics", "/v1/dispatch", "/v1/dispatch?room=r", "/v1/rooms/r",
    "/v1/rooms/r/messages?after=0", "/v1/rooms/r/messages?after=-1&limit=99999",
    "/v1/rooms/r/messages", "/v1/rooms/%00/messages", "/v1/login", "/v1/admin/audit",
    "/v1/admin/rooms/r/actions", "/v1/admin/rooms/r/config", "/v1/admin/rooms/r/words",
    "/v1/admin/users/u/revoke", "/v1/admin/users/%2e%2e/kick", "/ws", "/", "/nope",
    "/v1/rooms/" + "a" * 65, "//v1//rooms", "*",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "G\x00T", "get"]
header_names = st.sampled_from([
    "content-length", "transfer-encoding", "authorization", "content-type", "upgrade",
    "connection", "sec-websocket-key", "sec-websocket-version", "origin", "host", "x-y",
])
header_values = st.one_of(
    st.sampled_from(["0", "5", "-1", "99999999999999999999", "chunked", "websocket",
                     "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ==", "Bearer x.y.z", "",
                     "application/json", "\u202egnp.exe"]),
    st.text(max_size=40),
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([
        b'{"name":"a","password":"b"}', b'{"action":"ban","user":"x"}', b"[]", b"null",
        b'{"cmid":"c","body":{"text":"hi"}}', b'{"words":["a"]}', b"\xff\xfe", b"{" * 2000,
        b'{"config":{"slow_s":1e400}}', b'{"op":"send","n":' + b"9" * 400 + b"}",
    ]),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS) | st.text(max_size=8))
    path = draw(st.sampled_from(PATHS)) + draw(st.sampled_from(["", "?", "?x=%ff", "#f"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "", "HTTP/1.1 x"]))
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    if draw(st.booleans()):
        headers.append(("authorization", "Bearer " + draw(st.sampled_from(["TOKEN", "junk"]))))
    body = draw(bodies)
    sep = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    head = f"{method} {path} {version}{sep}host: gw{sep}"
    head += "".join(f"{k}: {v}{sep}" for k, v in headers)
    raw = head.encode("utf-8", "surrogatepass") + sep.encode() + body
    cut = draw(st.integers(min_value=0, max_value=len(raw)) | st.just(len(raw)))
    return raw[:cut]


@FUZZ
@given(requests())
def test_structured_requests_get_a_well_formed_answer(
    live: LiveGateway, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    caplog.set_level(logging.WARNING)
    data = data.replace(b"TOKEN", live.bearer.encode())
    check_answer(live.run(data))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_get_a_well_formed_answer_or_a_close(
    live: LiveGateway, data: bytes
) -> None:
    check_answer(live.run(data))


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # docs/security.md, hostile HTTP inputs: each row's answer
        (b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", 200),
        (b"GET /h\xffz HTTP/1.1\r\nhost: x\r\n\r\n", 400),  # invalid UTF-8 in the path
        (b"GET /healthz HTTP/1.1\r\nhost: x\r\nx: \x00\r\n\r\n", 400),  # control character
        (b"GET / HTTP/1.1\r\n" + b"x: " + b"a" * 20_000 + b"\r\n\r\n", 400),  # huge header
        (b"POST /v1/login HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999\r\n\r\n"
         + b"a" * 70_000, 413),  # a body over 64 KiB
        (b"POST /v1/login HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n{\xff\xfe}", 400),
        (b"POST /v1/login HTTP/1.1\r\nhost: x\r\ncontent-length: 4000\r\n\r\n" + b"[" * 4000,
         400),  # deep nesting
        (b"GET /v1/rooms/r/messages?after=99999999999999999999999 HTTP/1.1\r\nhost: x\r\n\r\n",
         400),  # huge number
        (b"GET /v1/rooms/r/messages?limit=abc HTTP/1.1\r\nhost: x\r\n\r\n", 400),  # wrong type
        (b"GET /ws HTTP/1.1\r\nhost: x\r\n\r\n", 400),  # an upgrade without its headers
        (b"BREW /healthz HTTP/1.1\r\nhost: x\r\n\r\n", 200),  # any method on /healthz
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # TLS to a plain listener
        (b"GET /healthz HTTP/1.1\r\n", 400),  # cut short by the client's EOF
        (b"", None),  # nothing at all: closed without an answer
        (b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\n", 200),  # headers, no body
    ],
)
def test_hostile_http_inputs(live: LiveGateway, raw: bytes, status: int | None) -> None:
    assert check_answer(live.run(raw)) == status
