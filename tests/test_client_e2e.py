"""The client SDK end to end, against a real engine (gateway + worker + redis-server)."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from engine.client import (
    Ack,
    DanmakuClient,
    Disconnected,
    Event,
    Joined,
    Kicked,
    Message,
    Nacked,
    Reconnected,
    Since,
    Unauthorized,
)
from engine.client._connection import backoff_delay
from engine.client._state import ClientConfig, ClientState
from engine.runner import make_shards, open_worker
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.redis

FAST: dict[str, Any] = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 5.0}


async def collect(
    client: DanmakuClient,
    room: str,
    n: int,
    *,
    events: list[Event] | None = None,
    on_message: Callable[[int], Awaitable[None]] | None = None,
) -> list[Message]:
    """The next `n` messages of `room` (every event seen goes to `events`)."""
    got: list[Message] = []
    async for ev in client.events():
        if events is not None:
            events.append(ev)
        if isinstance(ev, Message) and ev.room == room:
            got.append(ev)
            if on_message is not None:
                await on_message(len(got))
            if len(got) == n:
                break
    return got


def session_of(st: Stack, client: DanmakuClient) -> Any:
    assert client.session_id is not None
    return st.gateways[0].sessions[client.session_id]


def count_submits(st: Stack, monkeypatch: pytest.MonkeyPatch) -> list[trio.Event]:
    """Events set on the gateway's 1st, 2nd, ... forwarded send (a resend is one too)."""
    gw = st.gateways[0]
    original = gw.submit
    seen = [trio.Event() for _ in range(8)]
    calls = 0

    def submit(*args: Any, **kw: Any) -> bool:
        nonlocal calls
        accepted = original(*args, **kw)
        if calls < len(seen):
            seen[calls].set()
        calls += 1
        return accepted

    monkeypatch.setattr(gw, "submit", submit)
    return seen


@pytest.mark.parametrize("via", ["ws", "dispatch"])
async def test_send_and_receive_own_message(redis_url: str, via: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            url = st.ws_url() if via == "ws" else st.http_url()
            token = st.token("alice", name="Alice")
            async with DanmakuClient(url, token=token, dispatch_room="r1", **FAST) as client:
                assert client.user == "alice"
                assert client.guest is False
                assert client.heartbeat_ms is not None
                assert client.heartbeat_ms > 0
                joined = await client.join("r1")
                assert joined == Joined("r1", joined.epoch, 0, 1)
                ack = await client.send("r1", "hi", mode="top", color="#ff0000", offset_ms=1234)
                assert isinstance(ack, Ack)
                assert ack.room == "r1"
                assert ack.seq == 1
                seen: list[Event] = []
                (m,) = await collect(client, "r1", 1, events=seen)
                assert seen[0] == joined
                assert m.seq == ack.seq
                assert m.ts == ack.ts
                assert m.user == "alice"
                assert m.name == "Alice"
                assert m.kind == "danmaku"
                assert m.body == {"text": "hi", "mode": "top", "color": "#ff0000",
                                  "offset_ms": 1234}
                assert client.position("r1") == Since(joined.epoch, 1)
            assert client.closed is not None


async def test_fifty_messages_arrive_once_in_order(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, DanmakuClient(
            st.ws_url(), token=st.token("viewer"), **FAST
        ) as viewer, DanmakuClient(
            st.ws_url(), token=st.token("sender"), receive_events=False, **FAST
        ) as sender:
            await viewer.join("room")
            await sender.join("room")
            n = 50
            acks: list[Ack] = []
            async with trio.open_nursery() as nursery:

                async def produce() -> None:
                    for i in range(n):
                        acks.append(await sender.send("room", f"msg {i}"))

                nursery.start_soon(produce)
                got = await collect(viewer, "room", n)
            assert [m.seq for m in got] == list(range(1, n + 1))
            assert [m.body["text"] for m in got] == [f"msg {i}" for i in range(n)]
            assert [a.seq for a in acks] == list(range(1, n + 1))
            assert {m.user for m in got} == {"sender"}
            assert viewer.stats.duplicates_dropped == 0
            assert viewer.stats.holes_detected == 0


@pytest.mark.parametrize("how", ["going_away", "socket_dropped"])
async def test_reconnect_resumes_without_loss_or_duplicate(redis_url: str, how: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, DanmakuClient(
            st.ws_url(), token=st.token("viewer"), **FAST
        ) as viewer, DanmakuClient(
            st.ws_url(), token=st.token("sender"), receive_events=False, **FAST
        ) as sender:
            await viewer.join("live")
            await sender.join("live")
            first_session = viewer.session_id
            n = 150

            async def kill_at_20(count: int) -> None:
                if count == 20:
                    conn = session_of(st, viewer).conn
                    if how == "going_away":
                        conn.start_close(1001, "server going away")
                    else:
                        await conn.aclose()  # the TCP connection drops, no close frame

            acks: list[Ack] = []
            events: list[Event] = []
            async with trio.open_nursery() as nursery:

                async def produce() -> None:
                    for i in range(n):
                        acks.append(await sender.send("live", f"m{i}"))

                nursery.start_soon(produce)
                got = await collect(viewer, "live", n, events=events, on_message=kill_at_20)
            assert [m.seq for m in got] == list(range(1, n + 1))
            assert [m.body["text"] for m in got] == [f"m{i}" for i in range(n)]
            assert sorted(a.seq for a in acks) == list(range(1, n + 1))
            assert viewer.stats.reconnects == 1
            assert viewer.session_id != first_session
            kinds = [type(e) for e in events]
            d = kinds.index(Disconnected)
            assert kinds[d + 1 : d + 3] == [Reconnected, Joined]
            (disc,) = (e for e in events if isinstance(e, Disconnected))
            assert disc.code == (1001 if how == "going_away" else 1006)
            assert disc.will_reconnect


async def test_resend_after_timeout_yields_one_seq(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url], workers=0) as st:
            submits = count_submits(st, monkeypatch)
            async with DanmakuClient(
                st.ws_url(), token=st.token("alice"), ack_timeout_s=0.2, send_attempts=100, **FAST
            ) as client, DanmakuClient(st.ws_url(), **FAST) as viewer:
                await client.join("r")
                await viewer.join("r")
                acks: list[Ack] = []
                acked = trio.Event()
                async with trio.open_nursery() as nursery:

                    async def send() -> None:
                        acks.append(await client.send("r", "only once", cmid="fixed-1"))
                        acked.set()

                    nursery.start_soon(send)
                    # No worker yet, so no ack: the SDK resends the same frame after its timeout.
                    await submits[2].wait()
                    async with make_shards(st.settings) as shards, open_worker(
                        st.settings, shards
                    ):
                        (m,) = await collect(viewer, "r", 1)
                        await acked.wait()
                (ack,) = acks
                assert ack.cmid == "fixed-1"
                assert ack.seq == m.seq == 1
                assert client.stats.resends >= 2
                # Same cmid again (an app-level retry): same seq, nothing new is delivered.
                async with make_shards(st.settings) as shards, open_worker(st.settings, shards):
                    again = await client.send("r", "only once", cmid="fixed-1")
                    assert again.seq == 1
                    after = await client.send("r", "next")
                    assert after.seq == 2
                    (m2,) = await collect(viewer, "r", 1)
                assert m2.seq == 2
                assert m2.body["text"] == "next"


async def test_resend_after_reconnect_yields_one_seq(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url], workers=0) as st:
            submits = count_submits(st, monkeypatch)
            async with DanmakuClient(
                st.ws_url(), token=st.token("alice"), ack_timeout_s=60, **FAST
            ) as client, DanmakuClient(st.ws_url(), **FAST) as viewer:
                await client.join("r")
                await viewer.join("r")
                acks: list[Ack] = []
                acked = trio.Event()
                async with trio.open_nursery() as nursery:

                    async def send() -> None:
                        acks.append(await client.send("r", "survives", cmid="keep-1"))
                        acked.set()

                    nursery.start_soon(send)
                    await submits[0].wait()
                    session_of(st, client).conn.start_close(1001, "server going away")
                    await submits[1].wait()  # the resend on the new connection
                    async with make_shards(st.settings) as shards, open_worker(
                        st.settings, shards
                    ):
                        (m,) = await collect(viewer, "r", 1)
                        await acked.wait()
                (ack,) = acks
                assert ack.seq == m.seq == 1
                assert m.body["text"] == "survives"
                assert client.stats.reconnects == 1
                assert client.stats.resends == 1


async def test_bad_token_is_unauthorized(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            with pytest.raises(Unauthorized):
                async with DanmakuClient(st.ws_url(), token="not-a-jwt", **FAST):
                    pytest.fail("entered with a bad token")


async def test_kicked_client_does_not_reconnect(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st, DanmakuClient(
            st.ws_url(), token=st.token("bob"), **FAST
        ) as client:
            await client.join("r")
            session_of(st, client).conn.start_close(4003, "kicked")
            events = [ev async for ev in client.events()]  # ends: no reconnect
            assert isinstance(events[-1], Disconnected)
            assert events[-1].code == 4003
            assert not events[-1].will_reconnect
            assert isinstance(client.closed, Kicked)
            with pytest.raises(Kicked):
                await client.send("r", "still there?")
            assert client.stats.reconnects == 0


async def test_nacks_raise_with_their_code(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st, DanmakuClient(
            st.ws_url(), token=st.token("carol"), **FAST
        ) as client, DanmakuClient(st.ws_url(), **FAST) as guest:
            with pytest.raises(Nacked) as not_joined:
                await client.send("elsewhere", "hi")
            assert not_joined.value.code == "not_joined"
            await guest.join("r")
            with pytest.raises(Nacked) as unauthorized:
                await guest.send("r", "hi")
            assert unauthorized.value.code == "unauthorized"
            assert guest.guest is True


async def test_heartbeats_keep_an_idle_connection_open(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url], gateway={"heartbeat_ms": 200}) as st, DanmakuClient(
            st.ws_url(), token=st.token("idle"), **FAST
        ) as client:
            assert client.heartbeat_ms == 200
            await client.join("r")
            assert isinstance(await client.events().receive(), Joined)
            # Idle for 5 x the server's 2.5 x heartbeat_ms silence limit: no event may come.
            with trio.move_on_after(2.5):
                ev = await client.events().receive()
                pytest.fail(f"unexpected event on an idle connection: {ev}")
            assert client.connected
            assert client.stats.reconnects == 0


# -- against a scripted server: what the engine does not do on demand ---------------------------
Script = Callable[[WebSocketConnection, int, list[str]], Awaitable[None]]


@dataclass
class Scripted:
    url: str
    seen: list[list[str]]  # the raw frames received, per connection


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[Scripted]:
    """A WebSocket server running `script(ws, connection_number, frames_seen)` per connection,
    then recording whatever else the client sends."""
    seen: list[list[str]] = []
    numbers = itertools.count()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        frames: list[str] = []
        seen.append(frames)
        try:
            await script(ws, next(numbers), frames)
            while True:  # record the rest until the client goes
                frames.append(str(await ws.get_message()))
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        yield Scripted(f"ws://127.0.0.1:{server.port}/ws", seen)
        nursery.cancel_scope.cancel()


async def recv(ws: WebSocketConnection, frames: list[str]) -> dict[str, Any]:
    raw = str(await ws.get_message())
    frames.append(raw)
    return orjson.loads(raw)  # type: ignore[no-any-return]


async def emit(ws: WebSocketConnection, *objs: dict[str, Any]) -> None:
    for obj in objs:
        await ws.send_message(orjson.dumps(obj).decode())


def s_welcome(session: str) -> dict[str, Any]:
    return {"op": "welcome", "session": session, "user": "u1", "guest": False,
            "heartbeat_ms": 30000, "max_frame_bytes": 4096}


def s_joined(epoch: str, seq: int) -> dict[str, Any]:
    return {"op": "joined", "room": "r", "epoch": epoch, "seq": seq, "online": 1}


def s_batch(a: int, b: int, epoch: str = "e1") -> dict[str, Any]:
    msgs = [{"seq": i, "id": f"m{i}", "user": "u2", "name": "U2", "ts": i, "kind": "danmaku",
             "body": {"text": f"t{i}"}} for i in range(a, b + 1)]
    return {"op": "batch", "room": "r", "epoch": epoch, "from": a, "to": b, "msgs": msgs}


async def test_hole_triggers_a_join_with_since_on_the_live_connection() -> None:
    async def script(ws: WebSocketConnection, n: int, frames: list[str]) -> None:
        await recv(ws, frames)
        await emit(ws, s_welcome("s0"))
        await recv(ws, frames)
        await emit(ws, s_joined("e1", 0), s_batch(1, 2), s_batch(5, 6))  # 3..4 lost
        await recv(ws, frames)  # the re-join
        await emit(ws, s_joined("e1", 6), s_batch(3, 6), s_batch(1, 2), s_batch(7, 7))

    with trio.fail_after(10):
        async with scripted_server(script) as server:
            async with DanmakuClient(server.url, token="t", **FAST) as client:
                await client.join("r")
                got = await collect(client, "r", 7)
                assert [m.seq for m in got] == list(range(1, 8))
                assert client.stats.holes_detected == 1
                assert client.stats.duplicates_dropped == 4
            (frames,) = server.seen
            assert [orjson.loads(f) for f in frames[1:3]] == [
                {"op": "join", "room": "r"},
                {"op": "join", "room": "r", "since": {"epoch": "e1", "seq": 2}},
            ]


async def test_reconnect_rejoins_before_resending_the_same_frame() -> None:
    async def script(ws: WebSocketConnection, n: int, frames: list[str]) -> None:
        hello = await recv(ws, frames)
        assert hello == {"op": "hello", "token": "t", "client": "py/1.0"}
        await emit(ws, s_welcome(f"s{n}"))
        if n == 0:
            await recv(ws, frames)  # join
            await emit(ws, s_joined("e1", 0), s_batch(1, 3))
            await recv(ws, frames)  # the send: never acked on this connection
            await ws.aclose(1001, "going away")
        else:
            await recv(ws, frames)  # join with since
            send = await recv(ws, frames)
            await emit(ws, s_joined("e1", 4), s_batch(3, 4),
                       {"op": "ack", "room": "r", "cmid": send["cmid"], "seq": 4, "ts": 4})

    with trio.fail_after(10):
        async with scripted_server(script) as server:
            async with DanmakuClient(server.url, token="t", **FAST) as client:
                await client.join("r")
                acks: list[Ack] = []
                async with trio.open_nursery() as nursery:

                    async def send() -> None:
                        acks.append(await client.send("r", "t4"))

                    nursery.start_soon(send)
                    events: list[Event] = []
                    got = await collect(client, "r", 4, events=events)
                assert [m.seq for m in got] == [1, 2, 3, 4]
                assert acks[0].seq == 4
                assert [type(e) for e in events] == [
                    Joined, Message, Message, Message, Disconnected, Reconnected, Joined, Message
                ]
                assert client.session_id == "s1"
                assert client.stats.resends == 1
            first, second = server.seen
            assert orjson.loads(second[1]) == {
                "op": "join", "room": "r", "since": {"epoch": "e1", "seq": 3}
            }
            assert second[2] == first[2]  # the very same send frame, same cmid


async def test_token_rejected_on_reconnect_ends_the_client() -> None:
    async def script(ws: WebSocketConnection, n: int, frames: list[str]) -> None:
        await recv(ws, frames)
        if n == 0:
            await emit(ws, s_welcome("s0"))
            await ws.aclose(1001, "going away")
        else:
            await emit(ws, {"op": "error", "code": "unauthorized", "message": "token expired"})
            await ws.aclose(4001, "bad token")

    with trio.fail_after(10):
        async with scripted_server(script) as server, DanmakuClient(
            server.url, token="t", **FAST
        ) as client:
            events = [ev async for ev in client.events()]
            assert events == [
                Disconnected(1001, "going away", will_reconnect=True),
                Disconnected(4001, "unauthorized: token expired", will_reconnect=False),
            ]
            assert isinstance(client.closed, Unauthorized)
            with pytest.raises(Unauthorized):
                await client.join("r")


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    state = ClientState(ClientConfig("ws://x/ws", backoff_base_s=0.5, backoff_max_s=30,
                                     jitter=0.5), random.Random(7))
    for n, base in [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (40, 30.0)]:
        delays = [backoff_delay(state, n) for _ in range(200)]
        assert all(base * 0.5 <= d <= base * 1.5 for d in delays)
        assert max(delays) - min(delays) > base * 0.5  # really jittered
    exact = ClientState(ClientConfig("ws://x/ws", backoff_base_s=0.5, jitter=0.0))
    assert [backoff_delay(exact, n) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
