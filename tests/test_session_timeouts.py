"""Hello and heartbeat deadlines, over in-memory streams with trio's autojump clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Message, TextMessage

from engine.config import GatewaySettings, RedisSettings
from engine.gateway.app import Gateway
from engine.gateway.conn import WsConn
from engine.gateway.ws_session import Session
from engine.redis import ShardSet


class Peer:
    """The client end: wsproto frames over the other half of a memory stream pair."""

    def __init__(self, stream: trio.testing.MemoryStapledStream) -> None:  # type: ignore[name-defined]
        self.stream = stream
        self.ws = Connection(ConnectionType.CLIENT)
        self.closed_with: int | None = None

    async def send(self, obj: dict[str, object]) -> None:
        await self.stream.send_all(self.ws.send(Message(data=orjson.dumps(obj).decode())))

    async def next(self) -> dict[str, object] | None:
        """The next text frame, or None once the server closed (code in closed_with)."""
        while True:
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    return orjson.loads(event.data)  # type: ignore[no-any-return]
                if isinstance(event, CloseConnection):
                    self.closed_with = event.code
                    return None
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ws.receive_data(data)


@asynccontextmanager
async def session_pair(**settings: int) -> AsyncIterator[Peer]:
    gs = GatewaySettings(**settings)  # type: ignore[arg-type]
    # No Redis is touched: guests skip the registry and no room is joined.
    shards = ShardSet(["redis://127.0.0.1:9"])
    gw = Gateway(gs, RedisSettings(), shards, secret="s", node_id="t")
    server, client = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        conn = WsConn(server, nursery, max_message_bytes=4096, max_pending_bytes=1 << 20)
        nursery.start_soon(Session(gw, conn).run)
        yield Peer(client)
        nursery.cancel_scope.cancel()


async def test_no_hello_closes_4001_after_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session_pair(hello_timeout_ms=5000) as peer:
        start = trio.current_time()
        assert await peer.next() is None
        assert peer.closed_with == 4001
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)


async def test_other_op_before_hello_closes_4001(autojump_clock: trio.testing.MockClock) -> None:
    async with session_pair() as peer:
        await peer.send({"op": "join", "room": "r"})
        err = await peer.next()
        assert err is not None and err["code"] == "unauthorized"
        assert await peer.next() is None and peer.closed_with == 4001


async def test_silence_closes_4002_after_two_and_a_half_heartbeats(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session_pair(heartbeat_ms=30_000) as peer:
        await peer.send({"op": "hello", "client": "t"})
        welcome = await peer.next()
        assert welcome is not None and welcome["op"] == "welcome"
        assert welcome["guest"] is True and welcome["heartbeat_ms"] == 30_000
        await trio.sleep(70)  # mock time: within 75 s a ping keeps the connection alive
        await peer.send({"op": "ping", "t": 7})
        pong = await peer.next()
        assert pong is not None and pong["op"] == "pong" and pong["t"] == 7
        last_activity = trio.current_time()
        assert await peer.next() is None
        assert peer.closed_with == 4002
        assert trio.current_time() - last_activity == pytest.approx(75.0, abs=0.01)


async def test_flooding_closes_4008(autojump_clock: trio.testing.MockClock) -> None:
    async with session_pair(frames_per_s=5, frames_burst=5, errors_before_close=3) as peer:
        await peer.send({"op": "hello"})
        assert (await peer.next()) is not None
        try:
            for i in range(20):
                await peer.send({"op": "ping", "t": i})
        except trio.BrokenResourceError:
            pass  # the server closed mid-flood
        codes = []
        while (frame := await peer.next()) is not None:
            codes.append(frame.get("code", frame["op"]))
        assert peer.closed_with == 4008
        assert "rate_limited" in codes
