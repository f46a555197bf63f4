"""Micro-benchmark of engine.redis against a private redis-server (loopback).

    python loadtest/bench_redis.py [--seconds 3]

Prints INCR round trips/s (one task, and 16 concurrent tasks), pipelined INCR/s, pipelined
EVALSHA/s (``run_scripts`` batches of 100) and the client CPU per command.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from engine.embedded_redis import RedisProcess
from engine.redis import RedisClient, Script

SCRIPT = Script(
    """
local seq = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', 60)
return {1, seq, ARGV[2]}
"""
)


async def timed(
    label: str, seconds: float, ops_per_call: int, call: Callable[[], Awaitable[object]]
) -> None:
    deadline = time.perf_counter() + seconds
    cpu0, t0, n = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() < deadline:
        await call()
        n += ops_per_call
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"{label:<38} {n / wall:>11,.0f} /s   client CPU {cpu / n * 1e6:6.1f} us/op")


async def bench(url: str, seconds: float) -> None:
    async with RedisClient(url, max_connections=32) as redis:
        await redis.execute("PING")
        await timed("INCR round trips (1 task)", seconds, 1, lambda: redis.execute("INCR", "n"))

        async def concurrent() -> None:
            async def worker() -> None:
                for _ in range(200):
                    await redis.execute("INCR", "n")

            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(worker)

        await timed("INCR round trips (16 tasks)", seconds, 16 * 200, concurrent)
        incrs = [("INCR", "p")] * 100
        await timed("pipelined INCR (batches of 100)", seconds, 100, lambda: redis.pipeline(incrs))
        calls = [
            ([f"{{r:{i % 50}}}:seq", f"{{r:{i % 50}}}:dd:{i}"], [b"x" * 64, i]) for i in range(100)
        ]
        await redis.execute("SCRIPT", "FLUSH")
        await timed(
            "pipelined EVALSHA (run_scripts x100)",
            seconds,
            100,
            lambda: redis.run_scripts(SCRIPT, calls),
        )
        await timed(
            "EVALSHA round trips (run_script)",
            seconds,
            1,
            lambda: redis.run_script(SCRIPT, calls[0][0], calls[0][1]),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--url", default="", help="use this server instead of starting one")
    ns = parser.parse_args()
    if ns.url:
        trio.run(bench, ns.url, ns.seconds)
        return
    with tempfile.TemporaryDirectory() as tmp, RedisProcess(tmp, appendonly=False) as server:
        trio.run(bench, server.url, ns.seconds)


if __name__ == "__main__":
    main()
