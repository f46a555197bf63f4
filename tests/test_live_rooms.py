"""End to end over real sockets and real redis-server processes: the live-room contract."""

from __future__ import annotations

import pytest
import trio

from tests.stack import running_stack
from tests.wsclient import check_contiguous, collect_batches, connect

pytestmark = pytest.mark.redis


async def test_two_gateways_two_workers_two_shards(redis_urls2: list[str]) -> None:
    with trio.fail_after(30):
        async with running_stack(redis_urls2, gateways=2, workers=2) as st:
            # Rooms that spread over both shards (the hash depends on the shards' names).
            by_shard: dict[int, list[str]] = {0: [], 1: []}
            for i in range(64):
                by_shard[st.gateways[0].shards.index_for(f"room-{i}")].append(f"room-{i}")
            rooms = by_shard[0][:2] + by_shard[1][:2]
            async with connect(st.ws_url(0), st.token("v1")) as v1, connect(
                st.ws_url(1), st.token("v2")
            ) as v2, connect(st.ws_url(1), st.token("sender")) as sender:
                for room in rooms:
                    j1 = await v1.join(room)
                    j2 = await v2.join(room)
                    assert j1["seq"] == j2["seq"] == 0
                    assert j1["epoch"] == j2["epoch"]
                    assert j2["online"] == 2  # one viewer on each gateway
                    await sender.join(room)
                n = 40
                for i in range(n):
                    for room in rooms:
                        await sender.send_text(room, f"{room} {i}")
                for room in rooms:
                    seen = []
                    for viewer in (v1, v2):
                        batches = await collect_batches(viewer, room, n)
                        seqs = check_contiguous(batches, 1)
                        assert seqs == list(range(1, n + 1))
                        texts = [m["body"]["text"] for b in batches for m in b["msgs"]]
                        # Two workers share the ingress stream: the room's seq order is total,
                        # but sends not waited for may be sequenced in either order.
                        assert sorted(texts) == sorted(f"{room} {i}" for i in range(n))
                        seen.append([m["id"] for b in batches for m in b["msgs"]])
                    assert seen[0] == seen[1]  # both gateways deliver the same sequence


async def test_ack_carries_the_delivered_seq_and_fields(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), st.token("alice", name="Alice")
        ) as c:
            await c.join("r1")
            cmid = await c.send_text("r1", "hi", body={"mode": "top", "color": "#FF0000",
                                                       "offset_ms": 1234})
            ack = await c.acked(cmid)
            assert ack["op"] == "ack" and ack["seq"] == 1 and ack["room"] == "r1"
            batch = await c.expect("batch")
            (m,) = batch["msgs"]
            assert m["seq"] == 1 and m["user"] == "alice" and m["name"] == "Alice"
            assert m["kind"] == "danmaku" and m["ts"] == ack["ts"]
            assert m["body"] == {"text": "hi", "mode": "top", "color": "#ff0000",
                                 "offset_ms": 1234}
            assert set(m) == {"seq", "id", "user", "name", "ts", "kind", "body"}


async def test_resend_same_cmid_same_seq_delivered_once(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), st.token("alice")
        ) as c, connect(st.ws_url(), None) as viewer:
            await c.join("r")
            await viewer.join("r")
            first = await c.acked(await c.send_text("r", "once", cmid="dup-1"))
            again = await c.acked(await c.send_text("r", "once", cmid="dup-1"))
            assert first["seq"] == again["seq"] == 1
            after = await c.acked(await c.send_text("r", "next"))
            assert after["seq"] == 2
            batches = await collect_batches(viewer, "r", 2)
            assert check_contiguous(batches, 1) == [1, 2]


async def test_bad_input_answers_and_connection_stays_usable(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st, connect(st.ws_url(), st.token("u")) as c:
            cmid = await c.send_text("r", "early")
            nack = await c.acked(cmid)
            assert nack["op"] == "nack" and nack["code"] == "not_joined"
            await c.send("{not json")
            assert (await c.expect("error"))["code"] == "bad_request"
            await c.send({"op": "dance"})
            assert (await c.expect("error"))["code"] == "unknown_op"
            await c.send("x" * 10_000)
            assert (await c.expect("error"))["code"] == "too_large"
            await c.send({"op": "join", "room": "bad room!"})
            assert (await c.expect("error"))["code"] == "bad_request"
            await c.join("r")
            long = await c.acked(await c.send_text("r", "y" * 500))
            assert long["op"] == "nack" and long["code"] == "too_long"
            await c.send({"op": "ping", "t": 42})
            pong = await c.expect("pong")
            assert pong["t"] == 42
            ok = await c.acked(await c.send_text("r", "still fine"))
            assert ok["op"] == "ack" and ok["seq"] == 1


async def test_guest_cannot_send_and_bad_token_is_closed(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            async with connect(st.ws_url(), None) as guest:
                await guest.join("r")
                nack = await guest.acked(await guest.send_text("r", "hi"))
                assert nack["code"] == "unauthorized"
            async with connect(st.ws_url(), hello=False) as bad:
                await bad.send({"op": "hello", "token": "not-a-token"})
                err = await bad.expect("error")
                assert err["code"] == "unauthorized"
                assert await bad.close_code() == 4001
            forged = st.token("mallory")[:-4] + "AAAA"
            async with connect(st.ws_url(), hello=False) as bad:
                await bad.send({"op": "hello", "token": forged})
                assert (await bad.expect("error"))["code"] == "unauthorized"
                assert await bad.close_code() == 4001


async def test_gift_needs_streamer_role(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), st.token("fan")
        ) as fan, connect(st.ws_url(), st.token("host", role="streamer")) as host:
            await fan.join("r")
            await host.join("r")
            nack = await fan.acked(await fan.send_text("r", "gift!", kind="gift"))
            assert nack["op"] == "nack" and nack["code"] == "unauthorized"
            ack = await host.acked(await host.send_text("r", "thanks", kind="gift"))
            assert ack["op"] == "ack"


async def test_resume_with_since_gets_exactly_the_missed(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), st.token("s")
        ) as sender:
            await sender.join("r")
            async with connect(st.ws_url(), None) as viewer:
                joined = await viewer.join("r")
                for i in range(5):
                    await sender.acked(await sender.send_text("r", f"m{i}"))
                check_contiguous(await collect_batches(viewer, "r", 5), 1)
            for i in range(5, 12):
                await sender.acked(await sender.send_text("r", f"m{i}"))
            async with connect(st.ws_url(), None) as viewer:
                rejoin = await viewer.join("r", since={"epoch": joined["epoch"], "seq": 5})
                assert rejoin["seq"] == 12
                batches = await collect_batches(viewer, "r", 12)
                assert check_contiguous(batches, 6) == list(range(6, 13))
                await sender.acked(await sender.send_text("r", "live"))
                live = await collect_batches(viewer, "r", 13, after=12)
                assert check_contiguous(live, 13) == [13]
            async with connect(st.ws_url(), None) as viewer:
                await viewer.send({"op": "join", "room": "r",
                                   "since": {"epoch": "other", "seq": 3}})
                await viewer.expect("joined")
                reset = await viewer.expect("reset")
                assert reset["reason"] == "epoch_changed" and reset["seq"] == 13
                assert reset["epoch"] == joined["epoch"]


async def test_online_drops_when_viewers_leave(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st, connect(st.ws_url(), None) as a, connect(
            st.ws_url(), None
        ) as b, connect(st.ws_url(), None) as c:
            await a.join("r")
            assert (await b.join("r"))["online"] == 2
            await b.send({"op": "leave", "room": "r"})
            assert (await b.expect("left"))["room"] == "r"
            assert (await c.join("r"))["online"] == 2
            assert (await b.join("r"))["online"] == 3


async def test_rooms_on_a_redis_cluster(redis_cluster_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_cluster_url], redis={"cluster": True}) as st, connect(
            st.ws_url(), st.token("s")
        ) as sender, connect(st.ws_url(), None) as viewer:
            rooms = [f"c{i}" for i in range(6)]  # spread over the cluster's slots
            for room in rooms:
                await viewer.join(room)
                await sender.join(room)
            for i in range(5):
                for room in rooms:
                    ack = await sender.acked(await sender.send_text(room, f"{room}-{i}"))
                    assert ack["op"] == "ack" and ack["seq"] == i + 1
            for room in rooms:
                assert check_contiguous(await collect_batches(viewer, room, 5), 1) == [
                    1, 2, 3, 4, 5
                ]


async def test_holes_in_pubsub_are_filled_from_the_room_stream(redis_url: str) -> None:
    from engine import keys
    from engine.redis import RedisClient

    with trio.fail_after(20):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), st.token("s")
        ) as sender, connect(st.ws_url(), None) as viewer, RedisClient(redis_url) as redis:
            joined = await viewer.join("r")
            await sender.join("r")
            assert (await sender.acked(await sender.send_text("r", "one")))["seq"] == 1
            # Seq 2 is written to the room stream but its publication is "lost".
            lost = (b'{"seq":2,"id":"lost","ts":1,"user":"x","name":"x","kind":"danmaku",'
                    b'"body":{"text":"two","mode":"scroll","color":"#ffffff","offset_ms":0}}')
            await redis.pipeline([
                ["XADD", keys.stream_key("r"), "2-0", "m", lost],
                ["SET", keys.seq_key("r"), 2],
            ])
            assert (await sender.acked(await sender.send_text("r", "three")))["seq"] == 3
            batches = await collect_batches(viewer, "r", 3)
            assert check_contiguous(batches, 1) == [1, 2, 3]
            texts = [m["body"]["text"] for b in batches for m in b["msgs"]]
            assert texts == ["one", "two", "three"]
            assert joined["epoch"] == batches[-1]["epoch"]


async def test_a_dropped_pubsub_connection_loses_nothing(redis_url: str) -> None:
    from engine.redis import RedisClient

    with trio.fail_after(20):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), st.token("s")
        ) as sender, connect(st.ws_url(), None) as viewer, RedisClient(redis_url) as redis:
            await viewer.join("r")
            await sender.join("r")
            await sender.acked(await sender.send_text("r", "before"))
            await redis.execute("CLIENT", "KILL", "TYPE", "pubsub")
            for i in range(10):
                await sender.send_text("r", f"during {i}")
            # Acks travel on the gateway's reply channel (pub/sub too): some may be lost with
            # the connection, so the viewer's stream is the proof, not the acks.
            batches = await collect_batches(viewer, "r", 11)
            assert check_contiguous(batches, 1) == list(range(1, 12))


async def test_chunked_flush_delivers_each_seq_once_while_viewers_come_and_go(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contextlib import AsyncExitStack

    from engine.gateway import room_hub

    monkeypatch.setattr(room_hub, "FLUSH_CHUNK", 2)  # yield between every two viewers
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), st.token("s")
        ) as sender, AsyncExitStack() as stack:
            await sender.join("r")
            viewers = [await stack.enter_async_context(connect(st.ws_url(), None))
                       for _ in range(5)]
            epoch = ""
            for v in viewers:
                epoch = (await v.join("r"))["epoch"]
            late = None
            for i in range(1, 41):
                await sender.send_text("r", f"m{i}")
                if i == 20:  # a viewer joins mid-stream, resuming from seq 10
                    late = await stack.enter_async_context(connect(st.ws_url(), None))
                    await late.join("r", since={"epoch": epoch, "seq": 10})
            for v in viewers:
                assert check_contiguous(await collect_batches(v, "r", 40), 1) == list(
                    range(1, 41)
                )
            assert late is not None
            resumed = await collect_batches(late, "r", 40)
            assert check_contiguous(resumed, 11) == list(range(11, 41))


async def test_mass_disconnect_updates_online_and_registry_in_batches(redis_url: str) -> None:
    from contextlib import AsyncExitStack

    import trio.testing

    from engine.redis import RedisClient

    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, RedisClient(redis_url) as redis:
            gw = st.gateways[0]
            async with AsyncExitStack() as stack:
                for i in range(30):
                    c = await stack.enter_async_context(connect(st.ws_url(), st.token(f"u{i}")))
                    await c.join("r")
                assert len(await redis.execute("KEYS", "danmaku:sess:*")) == 30
            # Every session has ended once the gateway has nothing left to do.
            while gw.sessions:
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert await gw.online("r") == 0
            assert await redis.execute("KEYS", "danmaku:sess:*") == []
            async with connect(st.ws_url(), None) as c:
                assert (await c.join("r"))["online"] == 1
