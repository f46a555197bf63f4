"""RedisConnection and RedisClient against a real redis-server."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from engine.embedded_redis import sync_execute
from engine.errors import ConfigError
from engine.redis import (
    RedisClient,
    RedisConnection,
    RedisConnectionError,
    RedisReplyError,
    RedisTimeoutError,
    Script,
    parse_url,
)

pytestmark = pytest.mark.redis


def test_parse_url() -> None:
    a = parse_url("redis://:s3cr%40t@10.0.0.5:6380/3")
    assert (a.host, a.port, a.db, a.password, a.username) == ("10.0.0.5", 6380, 3, "s3cr@t", None)
    assert a.url == "redis://10.0.0.5:6380/3"  # no credentials in the printable form
    b = parse_url("unix:///run/redis.sock?db=2&password=pw")
    assert (b.path, b.db, b.password) == ("/run/redis.sock", 2, "pw")
    assert parse_url("redis://h").port == 6379
    assert parse_url("redis://user:pw@h:1").username == "user"
    with pytest.raises(ConfigError):
        parse_url("http://h:1")
    with pytest.raises(ConfigError, match=r"\*\*\*"):  # the password is not echoed
        parse_url("redis://:hunter2@h:notaport")


async def test_execute_and_reply_errors(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url) as redis:
            assert await redis.execute("PING") == b"PONG"
            assert await redis.execute("SET", "k", "v") == b"OK"
            assert await redis.execute("GET", "k") == b"v"
            assert await redis.execute("GET", "missing") is None
            assert await redis.execute("INCR", "n") == 1
            assert await redis.execute("INCRBY", "n", 41) == 42
            with pytest.raises(RedisReplyError) as info:
                await redis.execute("HSET", "k", "f", "v")
            assert info.value.kind == "WRONGTYPE"
            # an error reply leaves the connection healthy: still one connection
            assert await redis.execute("GET", "k") == b"v"
            stats = redis.statistics()
            assert (stats.created, stats.broken, stats.in_use, stats.idle) == (1, 0, 0, 1)


async def test_pipeline_with_an_error_in_the_middle(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url) as redis:
            replies = await redis.pipeline(
                [["SET", "k", 1], ["HSET", "k", "f", "v"], ["INCR", "k"], ["GET", "k"]]
            )
            assert replies[0] == b"OK"
            assert isinstance(replies[1], RedisReplyError)
            assert replies[1].kind == "WRONGTYPE"
            assert replies[2:] == [2, b"2"]
            assert await redis.pipeline([]) == []
            big = await redis.pipeline([["INCR", "c"]] * 5000)
            assert big == list(range(1, 5001))


async def test_scripts_fall_back_after_noscript(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bump.lua"
    path.write_text("return {redis.call('INCRBY', KEYS[1], ARGV[1]), ARGV[2]}\n", encoding="utf-8")
    script = Script.from_file(path)
    assert script.name == "bump.lua"
    assert len(script.sha1) == 40
    with trio.fail_after(10):
        async with RedisClient(redis_url) as redis:
            await redis.execute("SCRIPT", "FLUSH")
            assert await redis.run_script(script, ["c"], [5, "x"]) == [5, b"x"]  # via EVAL
            assert await redis.execute("SCRIPT", "EXISTS", script.sha1) == [1]
            assert await redis.run_script(script, ["c"], [1, "y"]) == [6, b"y"]  # via EVALSHA

            await redis.execute("SCRIPT", "FLUSH")
            calls = [(["c"], [1, i]) for i in range(10)]
            results = await redis.run_scripts(script, calls)
            assert results == [[7 + i, str(i).encode()] for i in range(10)]
            assert await redis.execute("GET", "c") == b"16"  # each call ran exactly once

            failing = Script("return redis.error_reply('BADTHING nope')")
            with pytest.raises(RedisReplyError) as info:
                await redis.run_script(failing)
            assert info.value.kind == "BADTHING"
            mixed = await redis.run_scripts(failing, [([], []), ([], [])])
            assert all(isinstance(r, RedisReplyError) for r in mixed)


async def test_pool_statistics_and_lazy_connections(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url, max_connections=8) as redis:
            assert redis.statistics().created == 0  # nothing connects before the first request
            results: list[object] = []

            async def pop() -> None:
                results.append(await redis.execute("BLPOP", "q", 10))

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(pop)
                await trio.testing.wait_all_tasks_blocked()
                stats = redis.statistics()
                assert (stats.in_use, stats.idle, stats.max, stats.created) == (3, 0, 8, 3)
                assert await redis.execute("RPUSH", "q", "a", "b", "c") == 3
            assert sorted(r[1] for r in results) == [b"a", b"b", b"c"]  # type: ignore[index]
            stats = redis.statistics()
            assert (stats.in_use, stats.idle, stats.created, stats.broken) == (0, 4, 4, 0)


async def test_cancelled_blocking_reads_do_not_leak_pool_slots(redis_url: str) -> None:
    """The coredis bug: more cancelled XREADGROUP BLOCKs than max_connections, then a PING."""
    max_connections = 4
    with trio.fail_after(20):
        async with RedisClient(redis_url, max_connections=max_connections) as redis:
            await redis.execute("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")

            async def blocked_read(consumer: str) -> None:
                await redis.execute(
                    "XREADGROUP", "GROUP", "g", consumer, "BLOCK", 10_000, "STREAMS", "s", ">"
                )
                raise AssertionError("the read should have been cancelled")

            rounds = 3
            for round_ in range(rounds):
                async with trio.open_nursery() as nursery:
                    for i in range(max_connections):
                        nursery.start_soon(blocked_read, f"c{round_}-{i}")
                    await trio.testing.wait_all_tasks_blocked()
                    assert redis.statistics().in_use == max_connections
                    nursery.cancel_scope.cancel()
                assert redis.statistics().in_use == 0

            with trio.fail_after(2):
                assert await redis.execute("PING") == b"PONG"
            stats = redis.statistics()
            assert stats.broken == rounds * max_connections
            assert stats.in_use == 0
            # a connection whose request was cancelled is never reused
            # XGROUP's connection was reused (and broken) in the first round; PING needed a new one
            assert stats.created == rounds * max_connections + 1


async def test_exhausted_pool_times_out(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url, max_connections=2, pool_timeout_s=0.2) as redis:
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(redis.execute, "BLPOP", "never", 10)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(RedisTimeoutError):
                    await redis.execute("PING")
                assert redis.statistics().waiting == 0
                nursery.cancel_scope.cancel()
            assert await redis.execute("PING") == b"PONG"


async def test_waiters_get_freed_slots(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url, max_connections=1) as redis:
            got: list[object] = []

            async def waiter() -> None:
                got.append(await redis.execute("GET", "k"))

            # the lease (inner) ends before the nursery (outer) waits for the waiter
            async with trio.open_nursery() as nursery, redis.connection() as conn:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert redis.statistics().waiting == 1
                await conn.execute("SET", "k", "from-lease")
            assert got == [b"from-lease"]
            assert redis.statistics().created == 1


async def test_connection_errors_are_not_retried(redis_url: str) -> None:
    with trio.fail_after(10):
        async with RedisClient(redis_url) as redis:
            async with redis.connection() as conn:
                client_id = await conn.execute("CLIENT", "ID")
                assert await redis.execute("CLIENT", "KILL", "ID", client_id) == 1
                with pytest.raises(RedisConnectionError):
                    await conn.execute("INCR", "n")
                assert conn.broken
                with pytest.raises(RedisConnectionError):  # never reused
                    await conn.execute("PING")
            assert redis.statistics().broken == 1
            assert await redis.execute("GET", "n") is None  # the INCR was not re-sent
            assert await redis.execute("INCR", "n") == 1


async def test_unreachable_server(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with trio.fail_after(10):
        async with RedisClient(f"redis://127.0.0.1:{port}", max_connections=1) as redis:
            for _ in range(3):  # the slot is given back after each failed connect
                with pytest.raises(RedisConnectionError):
                    await redis.execute("PING")
            assert redis.statistics().in_use == 0
        with pytest.raises(RedisConnectionError):
            await RedisConnection.connect(f"unix://{tmp_path}/nothing.sock")


async def test_connect_timeout() -> None:
    # A listening socket that never answers: TCP connects, the AUTH reply never comes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with trio.fail_after(10), pytest.raises(RedisTimeoutError):
            await RedisConnection.connect(f"redis://:pw@127.0.0.1:{port}", connect_timeout_s=0.2)


async def test_password_db_and_unix_socket(redis_factory: Any) -> None:
    server = await trio.to_thread.run_sync(
        lambda: redis_factory.start(unix_socket=True, password="pw")
    )
    path = server.socket_path
    with trio.fail_after(10):
        async with RedisClient(f"unix://{path}?db=2&password=pw") as redis:
            assert await redis.execute("SET", "k", "in-db-2") == b"OK"
        assert sync_execute(f"unix://{path}?db=2&password=pw", "GET", "k") == b"in-db-2"
        assert sync_execute(f"unix://{path}?password=pw", "GET", "k") is None
        with pytest.raises(RedisReplyError) as info:
            await RedisConnection.connect(f"unix://{path}?password=wrong")
        assert info.value.kind in ("WRONGPASS", "ERR")
        async with RedisClient(f"unix://{path}") as redis:
            with pytest.raises(RedisReplyError) as info:
                await redis.execute("GET", "k")
            assert info.value.kind == "NOAUTH"
    await trio.to_thread.run_sync(server.stop)


async def test_one_request_at_a_time(redis_url: str) -> None:
    with trio.fail_after(10):
        conn = await RedisConnection.connect(redis_url)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.execute, "BLPOP", "q", 1)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await conn.execute("PING")
                nursery.cancel_scope.cancel()
            assert conn.broken  # the BLPOP was cancelled mid-flight
        finally:
            await conn.aclose()


async def test_closed_client(redis_url: str) -> None:
    redis = RedisClient(redis_url)
    with trio.fail_after(10):
        assert await redis.execute("PING") == b"PONG"
        await redis.aclose()
        assert redis.statistics().idle == 0
        with pytest.raises(trio.ClosedResourceError):
            await redis.execute("PING")
