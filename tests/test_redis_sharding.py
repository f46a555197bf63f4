"""Room-to-shard assignment, key slots, and the Redis Cluster client."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

import pytest
import trio

from engine.embedded_redis import sync_execute
from engine.errors import ConfigError
from engine.redis import (
    ClusterClient,
    PubSub,
    RedisClient,
    RedisReplyError,
    Script,
    ShardSet,
    key_slot,
)
from engine.redis.sharding import first_key, parse_cluster_url

URLS3 = ["redis://127.0.0.1:1", "redis://127.0.0.1:2", "redis://127.0.0.1:3"]


# ---- pure: no server -----------------------------------------------------------------------------
def test_key_slot_matches_redis() -> None:
    # values from the Redis Cluster specification / CLUSTER KEYSLOT
    assert key_slot("123456789") == 0x31C3  # the CRC16/XMODEM check value
    assert key_slot("foo") == 12182
    assert key_slot(b"bar") == 5061
    assert (
        key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    )
    assert key_slot("foo{}{bar}") == key_slot("foo{}{bar}")  # empty tag: the whole key
    assert key_slot("foo{}{bar}") != key_slot("bar")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
    assert key_slot("foo{bar}{zap}") == key_slot("bar")
    assert key_slot("{r:room-1}:seq") == key_slot("{r:room-1}:stream") == key_slot("r:room-1")


def test_first_key() -> None:
    assert first_key(["GET", "k"]) == "k"
    assert first_key(["PING"]) is None
    assert first_key(["publish", "ch", "m"]) is None
    assert first_key(["EVALSHA", "abc", 2, "k1", "k2", "a"]) == "k1"
    assert first_key(["EVALSHA", "abc", 0, "a"]) is None
    assert first_key(["XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "STREAMS", "s", ">"]) == "s"
    assert first_key([b"XREAD", b"BLOCK", 1, b"streams", b"s1", b"s2", b"0", b"0"]) == b"s1"
    assert first_key(["XGROUP", "CREATE", "s", "g", "$"]) == "s"


def test_stable_assignment_is_pinned() -> None:
    # Hard-coded: if these change, every deployed room moves to another shard.
    shards = ShardSet(URLS3)
    expected = {"room-1": 0, "room-2": 1, "room-3": 2, "1001": 2, "lobby": 0, "弹幕": 0}
    assert {room: shards.index_for(room) for room in expected} == expected
    two = ShardSet(URLS3[:2])
    assert [two.index_for(r) for r in ("room-1", "room-2", "room-3")] == [0, 1, 1]


def test_assignment_is_the_documented_hrw() -> None:
    shards = ShardSet(URLS3)

    def hrw(room: str) -> int:
        scores = [
            hashlib.blake2b(f"shard-{i}".encode() + b"\0" + room.encode(), digest_size=8).digest()
            for i in range(3)
        ]
        return max(range(3), key=lambda i: scores[i])

    rooms = [f"r{i}" for i in range(500)]
    assert [shards.index_for(r) for r in rooms] == [hrw(r) for r in rooms]


def test_assignment_depends_on_names_not_urls() -> None:
    a = ShardSet(URLS3)
    b = ShardSet(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
    rooms = [f"room-{i}" for i in range(300)]
    assert [a.index_for(r) for r in rooms] == [b.index_for(r) for r in rooms]
    named = ShardSet(URLS3[:2], names=["east", "west"])
    assert {named.index_for(r) for r in rooms} == {0, 1}
    with pytest.raises(ConfigError):
        ShardSet(URLS3, names=["x", "x", "y"])


def test_spread_and_minimal_movement() -> None:
    three = ShardSet(URLS3)
    rooms = [f"room-{i}" for i in range(6000)]
    counts = Counter(three.index_for(r) for r in rooms)
    assert all(1700 < counts[i] < 2300 for i in range(3)), counts
    four = ShardSet([*URLS3, "redis://127.0.0.1:4"])
    moved = [r for r in rooms if three.index_for(r) != four.index_for(r)]
    # only rooms that now belong to the new shard move, about a quarter of them
    assert all(four.index_for(r) == 3 for r in moved)
    assert 1200 < len(moved) < 1800


def test_pubsub_urls_follow_the_shards() -> None:
    shards = ShardSet(["redis://:pw@127.0.0.1:1", "redis://127.0.0.1:2"])
    assert shards.pubsub_urls() == ["redis://:pw@127.0.0.1:1", "redis://127.0.0.1:2"]
    for room in ("a", "b", "c", "d"):
        assert shards.pubsub_url_for(room) == shards.pubsub_urls()[shards.index_for(room)]
        assert shards.client_for(room) is shards.client_for_index(shards.index_for(room))


def test_cluster_urls() -> None:
    seeds = parse_cluster_url("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001")
    assert [(s.host, s.port, s.password) for s in seeds] == [
        ("127.0.0.1", 7000, "pw"),
        ("127.0.0.1", 7001, "pw"),
    ]
    shards = ShardSet("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert shards.cluster
    assert len(shards.shards) == 1
    assert isinstance(shards.client_for("x"), ClusterClient)
    assert shards.index_for("anything") == 0
    assert set(shards.pubsub_urls()) == {"redis://127.0.0.1:7000", "redis://127.0.0.1:7001"}
    assert ShardSet(["redis://127.0.0.1:7000"], cluster=True).cluster


# ---- real shards ---------------------------------------------------------------------------------
@pytest.mark.redis
async def test_rooms_land_on_their_shard(redis_urls2: list[str]) -> None:
    rooms = [f"room-{i}" for i in range(40)]
    with trio.fail_after(10):
        async with ShardSet(redis_urls2) as shards:
            for room in rooms:
                await shards.client_for(room).execute("SET", f"{{r:{room}}}:seq", 1)
            for room in rooms:
                here = [sync_execute(url, "EXISTS", f"{{r:{room}}}:seq") for url in redis_urls2]
                expected = [0, 0]
                expected[shards.index_for(room)] = 1
                assert here == expected
            assert {shards.index_for(r) for r in rooms} == {0, 1}


# ---- Redis Cluster -------------------------------------------------------------------------------
def _tag(room: str) -> str:
    return "{r:" + room + "}"


def _exists_on(node_url: str, key: str) -> bool:
    try:
        return bool(sync_execute(node_url, "EXISTS", key))
    except RedisReplyError as exc:  # another node's slot
        if exc.kind != "MOVED":
            raise
        return False


@pytest.mark.redis
async def test_cluster_routing_pipelines_and_scripts(
    redis_cluster: Any, redis_cluster_url: str
) -> None:
    rooms = [f"room-{i}" for i in range(60)]
    with trio.fail_after(20):
        async with ShardSet([redis_cluster_url]) as shards:
            await shards.initialize()
            cluster = shards.client_for("any")
            assert isinstance(cluster, ClusterClient)
            assert len(cluster.nodes) == 3
            for room in rooms:
                assert await shards.client_for(room).execute("SET", _tag(room) + ":seq", room)

            # each key sits on the node that owns its slot, and every node got some
            per_node = Counter()
            for room in rooms:
                key = _tag(room) + ":seq"
                owners = [url for url in redis_cluster.node_urls if _exists_on(url, key)]
                assert len(owners) == 1
                assert sync_execute(owners[0], "CLUSTER", "KEYSLOT", key) == key_slot(key)
                per_node[owners[0]] += 1
            assert len(per_node) == 3

            # one pipeline over many rooms: grouped per node, answered in order
            replies = await cluster.pipeline([["GET", _tag(r) + ":seq"] for r in rooms])
            assert replies == [r.encode() for r in rooms]
            # MULTI/EXEC travel with the room's keys
            tx = await cluster.pipeline(
                [["MULTI"], ["INCR", _tag("a") + ":n"], ["INCR", _tag("a") + ":m"], ["EXEC"]]
            )
            assert tx == [b"OK", b"QUEUED", b"QUEUED", [1, 1]]
            # an error in the middle stays in place
            mixed = await cluster.pipeline(
                [["INCR", _tag("b") + ":n"], ["HSET", _tag("room-1") + ":seq", "f", 1], ["PING"]]
            )
            assert mixed[0] == 1
            assert isinstance(mixed[1], RedisReplyError)
            assert mixed[2] == b"PONG"

            # streams: XGROUP/XREADGROUP are routed by their stream key
            stream = "{in:0}"
            await cluster.execute("XGROUP", "CREATE", stream, "g", "0", "MKSTREAM")
            await cluster.execute("XADD", stream, "*", "f", "v")
            read = await cluster.execute(
                "XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "BLOCK", 100, "STREAMS", stream, ">"
            )
            assert read[0][0] == stream.encode()

            # scripts: NOSCRIPT fallback on whichever node a room lives
            for url in redis_cluster.node_urls:
                sync_execute(url, "SCRIPT", "FLUSH")
            script = Script("return {redis.call('INCR', KEYS[1]), ARGV[1]}")
            for room in rooms[:10]:
                assert await cluster.run_script(script, [_tag(room) + ":c"], [room]) == [
                    1,
                    room.encode(),
                ]
            for url in redis_cluster.node_urls:
                sync_execute(url, "SCRIPT", "FLUSH")
            calls = [([_tag(r) + ":c"], [r]) for r in rooms]
            results = await cluster.run_scripts(script, calls)
            assert results == [[2 if i < 10 else 1, r.encode()] for i, r in enumerate(rooms)]


@pytest.mark.redis
async def test_cluster_pubsub_on_any_node(redis_cluster_url: str) -> None:
    with trio.fail_after(10):
        async with ShardSet([redis_cluster_url]) as shards:
            url = shards.pubsub_url_for("room-1")
            assert url in shards.pubsub_urls()
            async with PubSub(url) as pubsub:
                await pubsub.subscribe("danmaku:room:room-1")
                for room in ("room-1", "other"):  # routed to whatever node; broadcast anyway
                    await shards.client_for(room).execute("PUBLISH", "danmaku:room:room-1", room)
                assert await pubsub.get_message() == (b"danmaku:room:room-1", b"room-1")
                assert await pubsub.get_message() == (b"danmaku:room:room-1", b"other")


async def _node_ids(admins: list[RedisClient]) -> list[bytes]:
    return [await admin.execute("CLUSTER", "MYID") for admin in admins]


async def _migrate_empty_slot(
    slot: int, src: RedisClient, dst: RedisClient, everyone: list[RedisClient], *, finish: bool
) -> None:
    src_id, dst_id = await _node_ids([src, dst])
    await dst.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    await src.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    if finish:
        await _finish_migration(slot, src, dst, everyone)


async def _finish_migration(
    slot: int, src: RedisClient, dst: RedisClient, everyone: list[RedisClient]
) -> None:
    (dst_id,) = await _node_ids([dst])
    for node in [dst, src, *(n for n in everyone if n not in (src, dst))]:
        await node.execute("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


@pytest.mark.redis
async def test_cluster_follows_ask_and_moved(redis_cluster: Any, redis_cluster_url: str) -> None:
    key = _tag("migrating") + ":seq"
    slot = key_slot(key)
    admins = {url: RedisClient(url) for url in redis_cluster.node_urls}
    owner_url: str | None = None
    try:
        with trio.fail_after(20):
            async with ClusterClient(parse_cluster_url(redis_cluster_url)) as cluster:
                await cluster.initialize()
                owner = await cluster.client_for_key(key)
                owner_url = owner.url
                src = admins[owner.url]
                dst = next(a for url, a in admins.items() if url != owner.url)
                everyone = list(admins.values())

                # ASK: the slot is migrating and the key is not on the source yet
                await _migrate_empty_slot(slot, src, dst, everyone, finish=False)
                assert await cluster.execute("SET", key, "v1") == b"OK"
                assert (await dst.pipeline([["ASKING"], ["GET", key]]))[1] == b"v1"
                with pytest.raises(RedisReplyError) as info:  # not on the source any more
                    await src.execute("GET", key)
                assert info.value.kind == "ASK"
                await _finish_migration(slot, src, dst, everyone)

                # MOVED: the client's map still names the source; it follows and refreshes
                assert (await cluster.client_for_key(key)).url == owner.url
                assert await cluster.execute("GET", key) == b"v1"
                assert (await cluster.client_for_key(key)).url == dst.url

                # MOVED inside a pipeline: each command is re-sent once, in order
                assert await cluster.execute("DEL", key) == 1
                await _migrate_empty_slot(slot, dst, src, everyone, finish=True)
                replies = await cluster.pipeline([["SET", key, "v2"], ["GET", key]])
                assert replies == [b"OK", b"v2"]
                assert await src.execute("GET", key) == b"v2"
                assert (await cluster.client_for_key(key)).url == owner.url
                # a script routed by its first key follows too
                assert await cluster.run_script(Script("return 7"), [key]) == 7
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            # leave the shared cluster as it was: slot back on its first owner, stable
            for admin in admins.values():
                await admin.execute("FLUSHALL")
            if owner_url is not None:
                original = admins[owner_url]
                (original_id,) = await _node_ids([original])
                for admin in [original, *(a for a in admins.values() if a is not original)]:
                    await admin.execute("CLUSTER", "SETSLOT", slot, "NODE", original_id)
            for admin in admins.values():
                await admin.aclose()


@pytest.mark.redis
async def test_cluster_key_slots_agree_with_the_server(redis_cluster: Any) -> None:
    rng = random.Random(7)
    keys = [f"k{rng.randrange(10**9)}" for _ in range(50)]
    keys += [f"{{r:room-{i}}}:x" for i in range(20)] + ["{}", "{a", "a}{", "弹幕{}"]
    with trio.fail_after(10):
        async with RedisClient(redis_cluster.node_urls[0]) as node:
            for key in keys:
                assert await node.execute("CLUSTER", "KEYSLOT", key) == key_slot(key), key
