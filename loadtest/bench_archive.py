"""Benchmarks of the archive (issue 3) on this machine, against both engines.

    python loadtest/bench_archive.py throughput [--rows 300000] [--rate 20000] [--seconds 20]
    python loadtest/bench_archive.py replay     [--rows 1000000] [--queries 300]
    python loadtest/bench_archive.py dashboards [--rows 10000000]
    python loadtest/bench_archive.py all

Every run uses a private redis-server and fresh data: the embedded engine (chdb) in a temp dir
and Debian's clickhouse-server started on free ports (tests/archive_fixtures.py), both over
loopback. ``--engines chdb,server`` picks the engines.

- throughput: (1) drain: ``--rows`` archive entries are queued in Redis first, then one
  archiver drains them (rows/s); (2) sustained: a producer XADDs ``--rate`` rows/s for
  ``--seconds`` while the archiver runs, and the lag it holds is sampled every 100 ms (oldest
  un-archived entry's age, backlog).
- replay: one room with ``--rows`` archived messages spread over 10 hours of video; 2-minute
  windows at random offsets replayed with ``store.replay`` (limit 10000, all of a window),
  p50/p99 latency.
- dashboards: ``--rows`` messages (100 rooms, 10,000 users, 24 hours) plus moderation and
  viewer rows, generated inside ClickHouse (INSERT ... SELECT FROM numbers); each dashboard query
  over the whole day and for one room, median of 3.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.archive.archiver import SHARD_STREAM, Archiver
from engine.archive.dashboards import DashboardParams, load_dashboards
from engine.archive.store import ArchiveStore, open_store
from engine.config import ArchiveSettings
from engine.embedded_redis import RedisProcess
from engine.redis import RedisClient, ShardSet

T0 = 1_795_000_000_000


def entry_fields(seq: int, room: str = "bench") -> list[bytes]:
    ts = int(time.time() * 1000)
    msg = orjson.dumps({
        "seq": seq, "id": f"{seq:016x}", "ts": ts, "user": f"u{seq % 5000}",
        "name": f"User {seq % 5000}", "kind": "danmaku",
        "body": {"text": f"comment number {seq} from the benchmark", "mode": "scroll",
                 "color": "#ffffff", "offset_ms": seq * 37},
    })
    return [b"r", room.encode(), b"e", b"e1", b"s", str(seq).encode(), b"m", msg, b"x",
            orjson.dumps({"rt": ts - 2, "gw": "gw-bench"})]


async def xadd(redis: RedisClient, first: int, count: int) -> None:
    cmds: list[list[Any]] = [["XADD", SHARD_STREAM, "*", *entry_fields(s)]
                             for s in range(first, first + count)]
    for i in range(0, len(cmds), 2000):
        await redis.pipeline(cmds[i : i + 2000])


# ---- engines ----------------------------------------------------------------------------------
class Engines:
    def __init__(self, root: Path, names: list[str]) -> None:
        self.root = root
        self.names = names
        self.server: Any = None

    def dsn(self, name: str, database: str) -> str:
        if name == "chdb":
            return f"chdb://{self.root / 'chdb'}?database={database}"
        if self.server is None:
            from tests.archive_fixtures import ClickHouseServer, find_clickhouse_server

            binary = find_clickhouse_server()
            assert binary, "clickhouse-server is not installed"
            self.server = ClickHouseServer(binary, self.root / "server")
            self.server.start()
        return f"{self.server.url}/{database}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


async def fresh_store(engines: Engines, name: str, database: str) -> ArchiveStore:
    store = open_store(engines.dsn(name, database))
    await store.ensure_schema()
    return store


# ---- throughput -------------------------------------------------------------------------------
async def bench_throughput(engines: Engines, args: argparse.Namespace) -> None:
    print("\n## archiver throughput (one archiver, one shard, batches of 5000 / 250 ms)")
    for name in engines.names:
        redis = RedisProcess(engines.root / f"redis-{name}", appendonly=False)
        redis.start()
        try:
            store = await fresh_store(engines, name, "tput")
            async with RedisClient(redis.url) as client, ShardSet([redis.url]) as shards:
                await xadd(client, 1, args.rows)
                archiver = Archiver(shards, store, ArchiveSettings(metrics_port=0))
                t0 = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    await nursery.start(archiver.run)
                    while True:  # until the queued rows are archived (and deleted)
                        if not await client.execute("XLEN", SHARD_STREAM):
                            break
                        await trio.sleep(0.02)
                    drain_s = time.perf_counter() - t0
                    print(f"{name:6} drain   {args.rows:,} rows queued in Redis: "
                          f"{args.rows / drain_s:,.0f} rows/s ({drain_s:.1f} s)")
                    # sustained: a producer at --rate rows/s, lag sampled every 100 ms
                    ages: list[float] = []
                    backlogs: list[int] = []
                    seq = args.rows + 1
                    step = args.rate // 20  # every 50 ms
                    end = trio.current_time() + args.seconds
                    next_at = trio.current_time()
                    last_sample = 0.0
                    while trio.current_time() < end:
                        await xadd(client, seq, step)
                        seq += step
                        next_at += 0.05
                        if trio.current_time() - last_sample >= 0.1:
                            last_sample = trio.current_time()
                            backlog, _pending, age = await archiver.lag()
                            ages.append(age)
                            backlogs.append(backlog)
                        await trio.sleep_until(next_at)
                    produced = seq - args.rows - 1
                    elapsed = args.seconds
                    nursery.cancel_scope.cancel()
                ages.sort()
                print(f"{name:6} sustain {produced / elapsed:,.0f} rows/s for {elapsed} s: "
                      f"lag p50 {ages[len(ages) // 2] * 1000:.0f} ms, "
                      f"p99 {ages[int(len(ages) * 0.99)] * 1000:.0f} ms, "
                      f"max {ages[-1] * 1000:.0f} ms; backlog max {max(backlogs):,} rows")
            await store.aclose()
        finally:
            redis.stop()


# ---- replay -----------------------------------------------------------------------------------
def _gen_messages_sql(rows: int, *, rooms: int, users: int, span_ms: int, room: str = "") -> str:
    room_expr = f"'{room}'" if room else f"concat('room-', toString(number % {rooms}))"
    seq_expr = "number + 1" if room else f"intDiv(number, {rooms}) + 1"
    return f"""INSERT INTO messages
SELECT room, seq, 'e1', hex(seq), user, concat('User ', user), kind, text, 'scroll', '#ffffff',
       offset_ms, ts, ts - 3 - number % 40, 'gw-1', 0,
       concat('{{"seq":', toString(seq), ',"id":"', hex(seq), '","ts":', toString(ts),
              ',"user":"', user, '","name":"User ', user, '","kind":"', toString(kind),
              '","body":{{"text":"', text, '","mode":"scroll","color":"#ffffff","offset_ms":',
              toString(offset_ms), '}}}}')
FROM
(
    SELECT number, {room_expr} AS room, {seq_expr} AS seq,
           concat('u', toString(number * 7919 % {users})) AS user,
           if(number % 50 = 0, 'gift', if(number % 301 = 0, 'superchat', 'danmaku')) AS kind,
           concat('comment ', toString(number)) AS text,
           toUInt64(intDiv(number * {span_ms}, {rows})) AS offset_ms,
           toUInt64({T0} + intDiv(number * {span_ms}, {rows})) AS ts
    FROM numbers({rows})
)"""


async def command(store: ArchiveStore, sql: str) -> None:
    await store._run(lambda c: c.command(sql))  # type: ignore[attr-defined]


async def bench_replay(engines: Engines, args: argparse.Namespace) -> None:
    print(f"\n## replay: one room with {args.rows:,} archived messages over 10 h of video,"
          f" 2-minute windows (all of each window), {args.queries} random windows")
    span = 10 * 3_600_000
    for name in engines.names:
        store = await fresh_store(engines, name, "replay")
        t0 = time.perf_counter()
        await command(store, _gen_messages_sql(args.rows, rooms=1, users=20_000, span_ms=span,
                                               room="vod"))
        load_s = time.perf_counter() - t0
        rng = random.Random(7)
        lat: list[float] = []
        sizes: list[int] = []
        for _ in range(args.queries):
            start = rng.randrange(0, span - 120_000)
            t = time.perf_counter()
            msgs = await store.replay("vod", start, start + 120_000, 10_000)
            lat.append((time.perf_counter() - t) * 1000)
            sizes.append(len(msgs))
        lat.sort()
        print(f"{name:6} p50 {lat[len(lat) // 2]:.1f} ms  p99 {lat[int(len(lat) * 0.99)]:.1f} ms"
              f"  max {lat[-1]:.1f} ms  ({statistics.mean(sizes):,.0f} messages per window;"
              f" load {load_s:.1f} s)")
        await store.aclose()


# ---- dashboards -------------------------------------------------------------------------------
async def bench_dashboards(engines: Engines, args: argparse.Namespace) -> None:
    day = 86_400_000
    print(f"\n## dashboards on {args.rows:,} messages (100 rooms, 10,000 users, 24 h), "
          f"median of 3")
    for name in engines.names:
        store = await fresh_store(engines, name, "dash")
        t0 = time.perf_counter()
        await command(store, _gen_messages_sql(args.rows, rooms=100, users=10_000, span_ms=day))
        await command(store, f"""INSERT INTO moderation SELECT
            concat('room-', toString(number % 100)), concat('u', toString(number % 10000)),
            arrayElement(['rate_limited', 'muted', 'filtered', 'banned', 'too_long'],
                         number % 5 + 1),
            {T0} + intDiv(number * {day}, 100000), '', '', 'gw-1' FROM numbers(100000)""")
        await command(store, f"""INSERT INTO viewers_online SELECT
            concat('gw-', toString(number % 4)), concat('room-', toString(intDiv(number, 4) % 100)),
            number % 997, {T0} + intDiv(number, 400) * 15000 FROM numbers(2304000)""")
        load_s = time.perf_counter() - t0
        print(f"{name:6} loaded in {load_s:.1f} s")
        for room in ("", "room-7"):
            params = DashboardParams(T0, T0 + day, room, 600_000, 20).as_dict()
            for dashboard in load_dashboards():
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    result = await store.query(dashboard.sql, params)
                    times.append((time.perf_counter() - t) * 1000)
                print(f"{name:6} {room or 'all rooms':9} {dashboard.name:22} "
                      f"{statistics.median(times):8.1f} ms  ({len(result.rows)} rows)")
        await store.aclose()


async def main(args: argparse.Namespace) -> None:
    names = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        engines = Engines(Path(tmp), names)
        try:
            if args.what in ("throughput", "all"):
                await bench_throughput(engines, args)
            if args.what in ("replay", "all"):
                await bench_replay(engines, replace_rows(args, args.replay_rows))
            if args.what in ("dashboards", "all"):
                await bench_dashboards(engines, replace_rows(args, args.dashboard_rows))
        finally:
            engines.stop()


def replace_rows(args: argparse.Namespace, rows: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "rows": rows})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("throughput", "replay", "dashboards", "all"))
    parser.add_argument("--engines", default="chdb,server")
    parser.add_argument("--rows", type=int, default=300_000, help="throughput: rows to drain")
    parser.add_argument("--rate", type=int, default=20_000, help="throughput: producer rows/s")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--replay-rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--dashboard-rows", type=int, default=10_000_000)
    args = parser.parse_args()
    trio.run(main, args)
