"""Reconnect storms: many viewers resuming at once (a gateway dropped all of them) against real
redis-server processes. Found by the soak run (loadtest/soak.py, issue 4)."""

from __future__ import annotations

import trio

from engine.client import DanmakuClient, Message, Reset, Since
from tests.stack import running_stack

MESSAGES = 300
VIEWERS = 20


async def test_viewers_resuming_together_share_one_read_and_all_get_everything(
    redis_url: str,
) -> None:
    """Every message is in the room stream (hot buffer 10,000) but not in the ring of the second
    gateway's new room hub, so each catch-up reads Redis; identical concurrent reads are shared.
    The waiters of a shared read used to get None (read as "older than the hot buffer") and a
    `reset` `too_old` for messages Redis still held."""
    async with running_stack([redis_url], gateways=2) as st:
        async with DanmakuClient(st.ws_url(0), token=st.token("sender"),
                                 receive_events=False) as sender:
            epoch = (await sender.join("r")).epoch
            for i in range(MESSAGES):
                await sender.send("r", f"m{i}")

        seen: list[list[int]] = []
        resets: list[Reset] = []

        async def viewer() -> None:
            got: list[int] = []
            seen.append(got)
            async with DanmakuClient(st.ws_url(1)) as client:
                await client.join("r", since=Since(epoch, 0))
                async for ev in client.events():
                    if isinstance(ev, Reset):
                        resets.append(ev)
                        return
                    if isinstance(ev, Message):
                        got.append(ev.seq)
                        if ev.seq == MESSAGES:
                            return

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(VIEWERS):
                    nursery.start_soon(viewer)

    assert resets == []
    assert seen == [list(range(1, MESSAGES + 1))] * VIEWERS


async def test_a_gateway_going_away_refuses_new_connections_while_it_drains(
    redis_url: str,
) -> None:
    """On shutdown the gateway stops accepting before it tells its viewers to go away (1001):
    a viewer reconnecting at once must be refused (and go to another gateway), not be taken
    in by the dying process and dropped a second time. A viewer that never answers the close
    keeps the gateway in its grace period while we try."""
    from engine.runner import open_gateway
    from tests.stack import SECRET, make_shards, stack_settings

    settings = stack_settings([redis_url])
    stop = trio.Event()

    async def gateway(*, task_status: trio.TaskStatus[int]) -> None:
        async with make_shards(settings) as shards, open_gateway(
            settings, shards, secret=SECRET
        ) as (_gw, listeners):
            task_status.started(listeners[0].socket.getsockname()[1])
            await stop.wait()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(gateway)
            mute = await trio.open_tcp_stream("127.0.0.1", port)  # upgrades, then never reads
            await mute.send_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            received = b""
            while b"\r\n\r\n" not in received:
                received += await mute.receive_some(4096)
            assert received.startswith(b"HTTP/1.1 101")
            hello = b'{"op":"hello","client":"test/1"}'  # a masked frame (mask key 0)
            await mute.send_all(bytes([0x81, 0x80 | len(hello)]) + b"\0\0\0\0" + hello)
            while b"welcome" not in received:
                received += await mute.receive_some(4096)
            stop.set()
            while b"\x88\x13\x03\xe9" not in received:  # the close frame, code 1001
                chunk = await mute.receive_some(4096)
                assert chunk, received
                received += chunk
            try:
                late = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                pass  # refused: what we want
            else:
                await late.aclose()
                raise AssertionError("the draining gateway accepted a new connection")
            await mute.aclose()
