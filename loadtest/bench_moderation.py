"""What the moderation step costs the room worker: CPU per message with and without it.

    python loadtest/bench_moderation.py [--batches 40] [--repeat 5] [--words 5000] [--pin]
    python loadtest/bench_moderation.py --stub     # no Redis: the worker's Python work only

Starts a private redis-server, then feeds the same kind of ingress entries (512 per read, eight
rooms, 500 senders, realistic short comments in Chinese and English) straight into
``RoomWorker.process`` (the worker's whole per-read path: parsing, rules, the pipelined script
calls, replies, XACK) and measures this process's CPU time (``time.process_time``; the
redis-server child's CPU is not counted) per message, for four workers:

- ``plain``: ``WorkerSettings(moderation=False)``, the sequencing step alone (ingest.lua);
- ``moderated, rooms unconfigured``: the moderation step on, no room has any rule;
- ``moderated, 5,000 words``: every room with a 5,000-word deny filter (the issue's case);
- ``moderated, 5,000 words + buckets + dup window``: the filter, per-user and per-room token
  buckets and a 30 s duplicate window.

Slow mode is off and every text distinct and clean, so that the messages are accepted, not
refused, and the full path is measured. The workers take turns in blocks of ``--block`` reads
(10 by default; who goes first rotates), and whole runs repeat; the median and the minimum of
each are reported with the overhead against ``plain`` (the minimum is the least disturbed by
other processes). Blocks, not
single reads: the workers share one Python process here, and with turns of one read the
garbage collections that one worker's allocations make due land in the others' turns (measured:
the word-filter worker was charged 1.7x the collections of the plain one when taking turns per
read, the same number when each ran alone); a real worker process runs its own reads only.
Do not run it while another CPU-heavy benchmark runs on the machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import orjson
import trio

from engine.config import RedisSettings, WorkerSettings
from engine.embedded_redis import RedisProcess
from engine.ingress import IngressMessage
from engine.redis import ShardSet
from engine.redis.resp import encode_pipeline
from rooms.keyword_filter import KeywordMatcher
from rooms.moderation import RoomFilter, config_key, words_key
from rooms.worker import RoomWorker

ROOMS = [f"bench-{i}" for i in range(8)]
PLAIN_ROOMS = [f"plain-{i}" for i in range(8)]  # never configured
WORD_ROOMS = [f"words-{i}" for i in range(8)]  # the word filter only
TEXTS = [
    "主播好厉害啊", "哈哈哈哈哈哈哈", "前方高能预警", "这操作太秀了吧", "666666",
    "awesome play!!", "gg wp", "lol what was that", "第一次来，关注了", "弹幕护体",
    "this song is so good", "卡了吗？我这边有点卡", "again again again", "好听好听",
    "what game is this?", "up主加油", "233333333", "nice shot", "泪目了", "冲冲冲",
]
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 2500)]
LATIN = "abcdefghijklmnopqrstuvwxyz"


def filter_words(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        if rng.random() < 0.5:
            words.add("".join(rng.choice(CJK) for _ in range(rng.randint(2, 4))))
        else:
            words.add("".join(rng.choice(LATIN) for _ in range(rng.randint(5, 9))))
    return sorted(words)


def entries(
    batch: int, size: int, tag: str, rooms: list[str] = ROOMS
) -> list[tuple[bytes, list[bytes]]]:
    rng = random.Random(batch)
    out = []
    for i in range(size):
        text = f"{rng.choice(TEXTS)} {batch * size + i}"  # unique: never a duplicate
        msg = IngressMessage(
            room=rooms[i % len(rooms)], user=f"user{rng.randint(0, 499)}", name="Viewer",
            role="viewer", cmid=f"{tag}-{batch}-{i}", kind="danmaku",
            body=orjson.dumps({"text": text, "mode": "scroll", "color": "#ffffff",
                               "offset_ms": rng.randint(0, 10**7)}),
            gateway="gw-bench", session="s", received_ms=1,
        )
        fields = [f if isinstance(f, bytes) else str(f).encode() for f in msg.fields()]
        out.append((f"{batch}-{i}".encode(), fields))
    return out


async def configure(client: Any, words: list[str]) -> None:
    """ROOMS: the word filter and every other rule; WORD_ROOMS: the word filter alone."""
    commands: list[list[Any]] = []
    for room in ROOMS + WORD_ROOMS:
        rules: list[Any] = ["filter", "deny"]
        if room in ROOMS:
            rules += ["urate", 1000, "uburst", 1000, "rrate", 1_000_000, "rburst", 1_000_000,
                      "dup_ms", 30_000]
        commands += [
            ["DEL", words_key(room)],
            ["SADD", words_key(room), *words],
            ["HSET", config_key(room), *rules],
            ["HINCRBY", config_key(room), "wv", 1],
        ]
    await client.pipeline(commands)


LABELS = {
    "plain": "plain (no moderation step)",
    "unconfigured": "moderated, rooms unconfigured",
    "words": "moderated, 5,000 words",
    "all": "moderated, 5,000 words + buckets + dup window",
}


async def run_once(
    shards: ShardSet, rs: RedisSettings, *, batches: int, rep: int, block: int
) -> dict[str, float]:
    """One run: the workers take turns in blocks of reads (so that whatever else the
    machine does disturbs them alike); returns each one's CPU per message in microseconds."""
    client = shards.client_for_index(0)
    setups = {
        "plain": (False, ROOMS),
        "unconfigured": (True, PLAIN_ROOMS),
        "words": (True, WORD_ROOMS),
        "all": (True, ROOMS),
    }
    workers = {
        name: RoomWorker(shards, rs, WorkerSettings(node_id=f"bench-{name}", moderation=mod))
        for name, (mod, _rooms) in setups.items()
    }
    work = {
        name: [entries(b, 512, f"{name}{rep}", rooms) for b in range(batches + 1)]
        for name, (_mod, rooms) in setups.items()
    }
    spent = dict.fromkeys(setups, 0.0)
    for name, worker in workers.items():  # the first read warms up: scripts, word filters
        await worker.process(client, "{in:" + name + "}", work[name][0])
    gc.collect()
    gc.freeze()  # the pre-built entries are not the worker's: keep them out of its GC work
    for name, b in turns(list(workers), range(1, batches + 1), block, rep):
        cpu = time.process_time()
        await workers[name].process(client, "{in:" + name + "}", work[name][b])
        spent[name] += time.process_time() - cpu
    count = batches * 512
    for name, worker in workers.items():
        # accepted, not refused: the full path was measured
        assert worker.sequenced >= (batches + 1) * 512, (name, worker.sequenced)
    return {name: value / count * 1e6 for name, value in spent.items()}


def turns(
    names: list[str], batches: range, block: int, rep: int
) -> Iterator[tuple[str, int]]:
    """``(worker, batch)`` in blocks of ``block`` batches per worker; who goes first rotates
    with every round (the first to touch the data pays its cache misses)."""
    order = list(batches)
    for r, start in enumerate(range(0, len(order), block)):
        k = (r + rep) % len(names)
        for name in names[k:] + names[:k]:
            for b in order[start:start + block]:
                yield name, b


class StubRedis:
    """``--stub``: answers every script call "sequenced" at once, after encoding the commands
    as the real client does, so only the worker's own Python work is measured."""

    async def run_scripts(self, script: Any, calls: list[Any]) -> list[Any]:
        encode_pipeline([script.evalsha_command(k, a) for k, a in calls])
        return [[1, 1, 1, b"epoch", b"id"] for _call in calls]

    async def pipeline(self, commands: list[Any]) -> list[Any]:
        encode_pipeline(commands)
        return [1] * len(commands)


async def run_stubbed(args: argparse.Namespace, words: list[str]) -> dict[str, list[float]]:
    shards = ShardSet(["redis://127.0.0.1:9"])  # never connected to
    rs = RedisSettings()
    workers = {
        "plain": RoomWorker(shards, rs, WorkerSettings(node_id="a", moderation=False)),
        "unconfigured": RoomWorker(shards, rs, WorkerSettings(node_id="b", moderation=True)),
        "words": RoomWorker(shards, rs, WorkerSettings(node_id="c", moderation=True)),
        "all": RoomWorker(shards, rs, WorkerSettings(node_id="d", moderation=True)),
    }
    matcher = KeywordMatcher(words)
    for name, dup in (("words", False), ("all", True)):
        moderation = workers[name].moderation
        assert moderation is not None
        for room in ROOMS:  # what a reload would have cached
            moderation._filters[room] = RoomFilter("1", "deny", matcher, dup)
    stub = StubRedis()
    results: dict[str, list[float]] = {name: [] for name in LABELS}
    for rep in range(args.repeat):
        work = [entries(b, 512, f"s{rep}") for b in range(args.batches)]
        spent = dict.fromkeys(workers, 0.0)
        gc.collect()
        gc.freeze()  # the pre-built entries are not the worker's: keep them out of its GC work
        for name, b in turns(list(workers), range(args.batches), args.block, rep):
            cpu = time.process_time()
            await workers[name].process(stub, "{in:stub}", work[b])
            spent[name] += time.process_time() - cpu
        for name, value in spent.items():
            results[name].append(value / (args.batches * 512) * 1e6)
    return results


async def main(args: argparse.Namespace) -> None:
    words = filter_words(args.words)
    LABELS["words"] = f"moderated, {args.words:,} words"
    LABELS["all"] = f"moderated, {args.words:,} words + buckets + dup window"
    if args.stub:
        report(args, await run_stubbed(args, words), "stubbed Redis (the worker's Python only)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(tmp, appendonly=False)
        async with redis.running():
            if args.pin and redis.pid is not None and len(os.sched_getaffinity(0)) > 1:
                # The worker on one core, Redis on another: the worker's CPU time is then
                # not inflated by the redis-server's work on the same core's caches.
                cores = sorted(os.sched_getaffinity(0))
                os.sched_setaffinity(0, {cores[0]})
                os.sched_setaffinity(redis.pid, {cores[1]})
            rs = RedisSettings(urls=(redis.url,))
            async with ShardSet([redis.url]) as shards:
                client = shards.client_for_index(0)
                results: dict[str, list[float]] = {name: [] for name in LABELS}
                for rep in range(args.repeat):
                    await client.execute("FLUSHALL")
                    await configure(client, words)
                    for name, value in (await run_once(
                        shards, rs, batches=args.batches, rep=rep, block=args.block
                    )).items():
                        results[name].append(value)
    report(args, results, "a real redis-server")


def report(args: argparse.Namespace, results: dict[str, list[float]], against: str) -> None:
    base, low = statistics.median(results["plain"]), min(results["plain"])
    print(f"worker CPU per message against {against}, median and minimum of {args.repeat} runs"
          f" of {args.batches} x 512 messages per worker ({len(ROOMS)} rooms each):")
    for key, label in LABELS.items():
        value, least = statistics.median(results[key]), min(results[key])
        runs = ", ".join(f"{v:.1f}" for v in results[key])
        # Each run's own overhead against the plain worker of the same run (they took
        # turns, so they met the same machine): the median of these is the least noisy figure.
        paired = statistics.median(
            v / p - 1 for v, p in zip(results[key], results["plain"], strict=True)
        )
        print(f"  {label:<48} median {value:5.1f} us ({(value / base - 1) * 100:+5.1f}%)"
              f"  min {least:5.1f} us ({(least / low - 1) * 100:+5.1f}%)"
              f"  paired {paired * 100:+5.1f}%  [{runs}]")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--words", type=int, default=5000)
    parser.add_argument("--block", type=int, default=10,
                        help="reads per turn of a worker (1: the workers alternate every read)")
    parser.add_argument("--stub", action="store_true",
                        help="no Redis: measure the worker's own Python work only")
    parser.add_argument("--pin", action="store_true",
                        help="pin this process and the redis-server to different cores")
    trio.run(main, parser.parse_args())
