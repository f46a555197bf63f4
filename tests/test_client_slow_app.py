"""A slow application must not lose messages (found by the soak run, loadtest/soak.py).

The SDK reads a whole `batch` frame, then hands its events to the app one by one through a
bounded buffer while it does not read the socket. Two things used to break exactly-once there:
the silence watchdog counted the hand-over as server silence and cut the connection in the
middle of it, and the resume then started after the end of the frame although the app had not
got the rest of it. The app saw a jump with no `reset` and no `skipped`.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import engine.client._connection as connection
from engine.client import (
    DanmakuClient,
    Disconnected,
    Event,
    Joined,
    Message,
    Reconnected,
    Reset,
    RoomStream,
    Since,
    Skipped,
)
from engine.client._state import ClientState
from tests.stack import Stack, running_stack

FAST: dict[str, Any] = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 5.0}


# -- the sans-IO part: positions per event, rewind ------------------------------------------------
def _batch(epoch: str, first: int, last: int, **kw: Any) -> dict[str, Any]:
    msgs = [
        {
            "seq": s,
            "id": f"m{s}",
            "user": "u",
            "name": "U",
            "ts": s,
            "kind": "danmaku",
            "body": {"text": str(s)},
        }
        for s in range(first, last + 1)
    ]
    return {
        "op": "batch",
        "room": "r",
        "epoch": epoch,
        "from": first,
        "to": last,
        "msgs": msgs,
        **kw,
    }


def test_each_event_carries_the_position_it_leaves_the_stream_at() -> None:
    rs = RoomStream("r")
    joined = rs.feed({"op": "joined", "room": "r", "epoch": "e1", "seq": 0, "online": 1})
    assert joined.positions == [Since("e1", 0)]
    assert rs.delivered == Since("e1", 0)  # a join from "now" starts there, seen or not
    result = rs.feed(_batch("e1", 1, 5, skipped=[[6, 7]]) | {"to": 7})
    assert [type(e) for e in result.events] == [Message] * 5 + [Skipped]
    assert result.positions == [Since("e1", s) for s in (1, 2, 3, 4, 5, 7)]
    reset = rs.feed({"op": "reset", "room": "r", "epoch": "e2", "seq": 40, "reason": "too_old"})
    assert reset.positions == [Since("e2", 40)]


def test_rewind_goes_back_to_the_last_event_handed_over() -> None:
    rs = RoomStream("r", "e1", 0)
    result = rs.feed(_batch("e1", 1, 10))
    assert rs.since() == Since("e1", 10)
    for position in result.positions[:3]:
        rs.handed_over(position)
    assert rs.rewind()
    assert rs.since() == Since("e1", 3)
    again = rs.feed(_batch("e1", 4, 12))  # what the resume delivers
    assert [e.seq for e in again.events if isinstance(e, Message)] == list(range(4, 13))
    for position in again.positions:
        rs.handed_over(position)
    assert not rs.rewind()  # everything handed over: nothing to drop
    assert rs.since() == Since("e1", 12)


def test_rewind_over_an_unseen_reset_resumes_in_the_old_epoch() -> None:
    rs = RoomStream("r", "e1", 5)
    rs.feed({"op": "reset", "room": "r", "epoch": "e2", "seq": 0, "reason": "epoch_changed"})
    assert rs.rewind()  # the app never saw the Reset: the server must say it again
    assert rs.since() == Since("e1", 5)


# -- end to end -----------------------------------------------------------------------------------
async def send_all(st: Stack, n: int) -> str:
    async with DanmakuClient(
        st.ws_url(), token=st.token("sender"), receive_events=False, **FAST
    ) as sender:
        joined = await sender.join("r")
        for i in range(n):
            await sender.send("r", f"m{i}")
    return joined.epoch


async def read_until(
    client: DanmakuClient,
    last_seq: int,
    *,
    work_s: float,
    events: list[Event],
    on_message: Any = None,
) -> list[int]:
    """Seqs of room r's messages up to `last_seq`, handling each in `work_s` (the app's work)."""
    seqs: list[int] = []
    async for ev in client.events():
        events.append(ev)
        if isinstance(ev, Message):
            seqs.append(ev.seq)
            if on_message is not None:
                await on_message(len(seqs))
            if ev.seq >= last_seq:
                break
            await trio.sleep(work_s)  # the app's work per message, not synchronisation
    return seqs


@pytest.mark.redis
async def test_slow_app_is_not_mistaken_for_a_silent_server(redis_url: str) -> None:
    # Heartbeat 400 ms: the watchdog's limit is 1 s; a catch-up frame takes 4 s to hand over.
    n = 200
    with trio.fail_after(20):
        async with running_stack([redis_url], gateway={"heartbeat_ms": 400}) as st:
            epoch = await send_all(st, n)
            events: list[Event] = []
            async with DanmakuClient(st.ws_url(), event_buffer=8, **FAST) as client:
                await client.join("r", since=Since(epoch, 0))
                seqs = await read_until(client, n, work_s=0.02, events=events)
                assert client.position("r") == Since(epoch, n)
                stats = client.stats
    assert seqs == list(range(1, n + 1))
    assert not [e for e in events if isinstance(e, Reset | Skipped | Disconnected)]
    assert stats.reconnects == 0
    assert stats.holes_detected == 0
    assert stats.messages == n


@pytest.mark.redis
async def test_connection_cut_in_the_middle_of_a_hand_over_loses_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever ends the connection while a frame is being handed over (here: its heartbeat
    task cancels it, as the old watchdog did), the resume starts after the last event the app
    got, not after the end of the frame."""
    n = 150
    cut_now = trio.Event()
    cut: list[tuple[Since | None, Since | None, bool]] = []  # (handed over, fed, handing over)
    original = connection._heartbeat

    async def heartbeat(state: ClientState, ws: Any, scope: trio.CancelScope) -> None:
        if cut:
            await original(state, ws, scope)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(original, state, ws, scope)
            await cut_now.wait()
            stream = state.rooms["r"]
            cut.append((stream.delivered, stream.since(), state.handing_over))
            scope.cancel()

    monkeypatch.setattr(connection, "_heartbeat", heartbeat)

    async def cut_at_20(count: int) -> None:
        if count == 20:
            cut_now.set()

    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            epoch = await send_all(st, n)
            events: list[Event] = []
            async with DanmakuClient(st.ws_url(), event_buffer=4, **FAST) as client:
                await client.join("r", since=Since(epoch, 0))
                seqs = await read_until(
                    client, n, work_s=0.002, events=events, on_message=cut_at_20
                )
                stats = client.stats
    ((delivered, fed, handing_over),) = cut
    assert handing_over  # the cut came while the reader was blocked handing events over
    assert delivered is not None
    assert fed is not None
    assert delivered.seq < fed.seq  # events were read but not yet handed over: they were dropped
    assert seqs == list(range(1, n + 1))  # ...and delivered again after the resume, once
    assert stats.reconnects == 1
    assert stats.holes_detected == 0
    kinds = [type(e) for e in events]
    d = kinds.index(Disconnected)
    assert kinds[d + 1 : d + 3] == [Reconnected, Joined]


@pytest.mark.parametrize("how", ["going_away", "socket_dropped"])
@pytest.mark.redis
async def test_server_drop_during_a_slow_hand_over_loses_nothing(redis_url: str, how: str) -> None:
    """The server ends the connection (close frame, or the TCP connection just drops) while
    the app is slowly taking a catch-up: the frames already read are still handed over, the
    resume fetches the rest, and live messages after the reconnect follow in order."""
    n, live = 300, 5
    with trio.fail_after(20):
        async with running_stack([redis_url], gateway={"heartbeat_ms": 400}) as st:
            epoch = await send_all(st, n)
            events: list[Event] = []

            async with DanmakuClient(st.ws_url(), event_buffer=8, **FAST) as client:

                async def drop_at_20(count: int) -> None:
                    if count == 20:
                        assert client.session_id is not None
                        conn = st.gateways[0].sessions[client.session_id].conn
                        if how == "going_away":
                            conn.start_close(1001, "server going away")
                        else:
                            await conn.aclose()

                await client.join("r", since=Since(epoch, 0))
                seqs = await read_until(
                    client, n, work_s=0.005, events=events, on_message=drop_at_20
                )
                await send_all(st, live)
                seqs += await read_until(client, n + live, work_s=0, events=events)
                stats = client.stats
    assert seqs == list(range(1, n + live + 1))
    assert not [e for e in events if isinstance(e, Reset | Skipped)]
    assert stats.reconnects == 1
    assert stats.holes_detected == 0
