"""Delivery under failure: a worker killed mid-stream, and a viewer that stops reading."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import wrap_client_stream

from engine import keys
from engine.redis import RedisClient
from tests.stack import SECRET, running_stack
from tests.wsclient import check_contiguous, collect_batches, connect

pytestmark = pytest.mark.redis


def start_worker(redis_url: str, name: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DANMAKU_REDIS_URLS": redis_url,
        "DANMAKU_SECRET": SECRET,
        "DANMAKU_WORKER_NODE_ID": name,
        "DANMAKU_WORKER_CLAIM_IDLE_MS": "400",
        "DANMAKU_WORKER_CLAIM_EVERY_MS": "200",
        "DANMAKU_WORKER_BLOCK_MS": "100",
        "DANMAKU_WORKER_READ_COUNT": "16",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "worker", "--log-level", "WARNING"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()  # printed once the consumer group is set up
    assert b"danmaku worker" in banner, banner
    return proc


async def test_worker_killed_mid_stream_loses_and_duplicates_nothing(redis_url: str) -> None:
    workers = [start_worker(redis_url, "wk-a"), start_worker(redis_url, "wk-b")]
    try:
        with trio.fail_after(60):
            async with running_stack([redis_url], workers=0) as st, connect(
                st.ws_url(), st.token("s")
            ) as sender:
                await sender.join("r")
                n = 400
                acked: dict[str, int] = {}
                for i in range(n):
                    await sender.send_text("r", f"m{i}", cmid=f"k{i}")
                    if i == n // 3:
                        workers[0].send_signal(signal.SIGKILL)
                while len(acked) < n:
                    frame = await sender.recv()
                    if frame["op"] == "ack":
                        acked.setdefault(frame["cmid"], frame["seq"])
                        assert acked[frame["cmid"]] == frame["seq"]
                    else:
                        assert frame["op"] in {"batch"}, frame
        async with RedisClient(redis_url) as redis:
            entries = await redis.execute("XRANGE", keys.stream_key("r"), "-", "+")
        seqs = [int(e[0].split(b"-")[0]) for e in entries]
        texts = [orjson.loads(e[1][1])["body"]["text"] for e in entries]
        assert seqs == list(range(1, n + 1))
        assert sorted(texts) == sorted(f"m{i}" for i in range(n))
        assert all(texts[acked[f"k{i}"] - 1] == f"m{i}" for i in range(n))
    finally:
        for proc in workers:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


async def test_slow_viewer_never_delays_others_and_is_shed_only_of_danmaku(
    redis_url: str,
) -> None:
    with trio.fail_after(60):
        async with running_stack(
            [redis_url],
            gateway={"shed_after_bytes": 4096, "socket_sndbuf_bytes": 4096,
                     "max_pending_bytes": 1 << 20},
        ) as st, trio.open_nursery() as nursery:
            host, port = st.gateways[0].settings.host, st.gateways[0].settings.port
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect((host, port))
            slow_stream = trio.SocketStream(sock)
            slow = await wrap_client_stream(
                nursery, slow_stream, host, "/ws", message_queue_size=1
            )
            await slow.send_message(orjson.dumps({"op": "hello"}).decode())
            await slow.send_message(orjson.dumps({"op": "join", "room": "r"}).decode())
            frames: list[dict[str, Any]] = []
            while not frames or frames[-1]["op"] != "joined":
                frames.append(orjson.loads(await slow.get_message()))
            # From here on the slow viewer reads nothing until every message has gone out.
            n = 1500
            gifts = set(range(10, n + 1, 50))
            async with connect(st.ws_url(), st.token("host", role="streamer")) as sender, \
                    connect(st.ws_url(), None) as fast:
                await fast.join("r")
                await sender.join("r")
                got: list[int] = []

                async def read_fast() -> None:
                    got.extend(check_contiguous(await collect_batches(fast, "r", n), 1))

                async with trio.open_nursery() as inner:
                    inner.start_soon(read_fast)
                    for seq in range(1, n + 1):
                        kind = "gift" if seq in gifts else "danmaku"
                        await sender.send_text("r", f"{seq:04d} " + "x" * 150, kind=kind)
                        if seq % 100 == 0:  # keep a bounded number in flight
                            while (await sender.recv()).get("seq") != seq:
                                pass
                assert got == list(range(1, n + 1))
            assert st.gateways[0].metrics.frames_out._value.get() > 0
            batches = []
            while not batches or batches[-1]["to"] < n:
                frame = orjson.loads(await slow.get_message())
                if frame["op"] == "batch":
                    batches.append(frame)
            delivered = check_contiguous(batches, 1)
            skipped = {s for b in batches for a, z in b.get("skipped", []) for s in range(a, z + 1)}
            assert skipped, "the slow viewer should have been shed"
            assert gifts <= set(delivered)
            assert not skipped & gifts
            assert set(delivered) | skipped == set(range(1, n + 1))
            await trio.aclose_forcefully(slow_stream)
            nursery.cancel_scope.cancel()
