"""The client SDK end to end, against a real engine (gateway + worker + redis-server)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from engine.client import (
    Ack,
    DanmakuClient,
    Disconnected,
    Event,
    Joined,
    Kicked,
    Message,
    Reconnected,
    Since,
    Unauthorized,
)
from engine.runner import make_shards, open_worker
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.redis

FAST = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 5.0}


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

    async def submit(*args: Any, **kw: Any) -> None:
        nonlocal calls
        await original(*args, **kw)
        if calls < len(seen):
            seen[calls].set()
        calls += 1

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
