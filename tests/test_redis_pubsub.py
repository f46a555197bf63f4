"""PubSub against a real redis-server."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from engine.redis import Message, PubSub, RedisClient, RedisConnectionError

pytestmark = pytest.mark.redis


async def _first(pubsub: PubSub) -> Message:
    async for message in pubsub:
        return message
    raise AssertionError("iteration ended")


async def _drain_into(pubsub: PubSub, into: list[Message]) -> None:
    while True:
        into.append(await pubsub.get_message())


async def test_subscribe_publish_receive(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url) as redis, PubSub(redis_url) as pubsub:
            await pubsub.subscribe("a", b"b")
            assert pubsub.channels == {b"a", b"b"}
            # subscribe() returned after the server's confirmation: nothing can be missed now
            assert await redis.execute("PUBLISH", "a", "1") == 1
            assert await redis.execute("PUBLISH", "b", b"\x00\xff") == 1
            assert await pubsub.get_message() == (b"a", b"1")
            assert await pubsub.get_message() == (b"b", b"\x00\xff")
            await pubsub.ping()


async def test_subscribe_and_unsubscribe_while_another_task_iterates(redis_url: str) -> None:
    received: list[Message] = []
    with trio.fail_after(10):
        async with RedisClient(redis_url) as redis, PubSub(redis_url) as pubsub:
            await pubsub.subscribe("first")
            send, recv = trio.open_memory_channel[Message](100)

            async def consume() -> None:
                async for message in pubsub:
                    received.append(message)
                    await send.send(message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()  # the consumer is reading
                await pubsub.subscribe("second")  # confirmed through the consumer's reads
                await redis.execute("PUBLISH", "second", "s1")
                assert await recv.receive() == (b"second", b"s1")

                await pubsub.unsubscribe("first")
                assert await redis.execute("PUBLISH", "first", "gone") == 0
                await redis.execute("PUBLISH", "second", "s2")
                assert await recv.receive() == (b"second", b"s2")

                await pubsub.psubscribe("room:*")
                await redis.execute("PUBLISH", "room:7", "p1")
                assert await recv.receive() == (b"room:7", b"p1")
                await pubsub.punsubscribe()
                await pubsub.unsubscribe()
                assert pubsub.channels == frozenset()
                assert await redis.execute("PUBLISH", "second", "s3") == 0
                await pubsub.ping()  # outside subscribe mode now: a plain +PONG
                await pubsub.aclose()  # ends the consumer's iteration
            assert received == [(b"second", b"s1"), (b"second", b"s2"), (b"room:7", b"p1")]


async def test_many_messages_in_order(redis_url: str) -> None:
    with trio.fail_after(20):
        async with RedisClient(redis_url) as redis, PubSub(redis_url) as pubsub:
            await pubsub.subscribe("c")
            await redis.pipeline([["PUBLISH", "c", str(i)] for i in range(3000)])
            got: list[bytes] = []
            while len(got) < 3000:
                got += [data for _channel, data in await pubsub.get_messages(500)]
            assert got == [str(i).encode() for i in range(3000)]
            assert pubsub.buffered == 0


async def test_server_killed_raises_after_buffered_messages(redis_factory: Any) -> None:
    server = await trio.to_thread.run_sync(redis_factory.start)
    with trio.fail_after(10):
        async with RedisClient(server.url) as redis, PubSub(server.url) as pubsub:
            await pubsub.subscribe("c")
            await redis.execute("PUBLISH", "c", "before")
            await trio.to_thread.run_sync(server.kill)
            assert await pubsub.get_message() == (b"c", b"before")
            with pytest.raises(RedisConnectionError):
                await _first(pubsub)
            assert pubsub.broken
            with pytest.raises(RedisConnectionError):
                await pubsub.subscribe("d")


async def test_reconnect_resubscribes(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url) as redis, PubSub(redis_url) as pubsub:
            await pubsub.subscribe("c")
            await pubsub.psubscribe("p:*")
            assert await redis.execute("CLIENT", "KILL", "TYPE", "pubsub") == 1
            with pytest.raises(RedisConnectionError):
                await pubsub.get_message()
            await pubsub.reconnect()
            assert not pubsub.broken
            assert await redis.execute("PUBLISH", "c", "again") == 1
            assert await redis.execute("PUBLISH", "p:1", "pattern") == 1
            assert await pubsub.get_message() == (b"c", b"again")
            assert await pubsub.get_message() == (b"p:1", b"pattern")


async def test_slow_consumer_overflow_breaks_the_connection(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url) as redis, PubSub(redis_url, max_buffered=10) as pubsub:
            await pubsub.subscribe("c")
            await redis.pipeline([["PUBLISH", "c", str(i)] for i in range(50)])
            got: list[Message] = []
            with pytest.raises(RedisConnectionError, match="too slow"):
                await _drain_into(pubsub, got)
            # what was buffered before the overflow is delivered, in order, then the error
            assert [data for _c, data in got] == [str(i).encode() for i in range(len(got))]
            assert 10 <= len(got) <= 11


async def test_cancelled_subscribe_leaves_the_connection_usable(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url) as redis, PubSub(redis_url) as pubsub:
            await pubsub.subscribe("c")
            with trio.CancelScope() as scope:
                scope.cancel()
                await pubsub.subscribe("d")  # cancelled before it was sent: no trace
            assert pubsub.channels == {b"c"}
            assert not pubsub.broken
            assert await redis.execute("PUBLISH", "d", "1") == 0
            await redis.execute("PUBLISH", "c", "2")
            assert await pubsub.get_message() == (b"c", b"2")
