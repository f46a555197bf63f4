"""Replay and deep resume through a real gateway, worker and archiver on real Redis, against both
real ClickHouse engines: the HTTP replay endpoint, ``danmaku replay``, and a ``join`` with
``since`` older than the hot buffer served from the archive and then from Redis."""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

import orjson
import pytest
import trio

from engine import keys
from engine.archive.dashboards import load_dashboards
from engine.archive.store import ArchiveStore
from engine.redis import RedisClient
from tests.archive_fixtures import archive_stack, wait_archived
from tests.httpclient import get_json, request
from tests.stack import running_stack, running_up
from tests.wsclient import Raw, check_contiguous, collect_batches, connect

pytest_plugins = ["tests.archive_fixtures"]
pytestmark = pytest.mark.redis

DANMAKU = [sys.executable, "-m", "engine.cli"]
SMALL_HOT_BUFFER = {"redis": {"hot_buffer_len": 20}, "gateway": {"ring_size": 16}}


async def send_all(c: Raw, room: str, n: int, *, offset: Any = None, start: int = 0) -> None:
    """Send n messages (pipelined), then wait for every ack."""
    cmids = []
    for i in range(start, start + n):
        off = offset(i) if offset else i * 100
        cmids.append(await c.send_text(room, f"msg {i}", body={"offset_ms": off}))
    for cmid in cmids:
        ack = await c.acked(cmid)
        assert ack["op"] == "ack", ack


async def hot_buffer_first_seq(url: str, room: str) -> int:
    async with RedisClient(url) as redis:
        first = await redis.execute("XRANGE", keys.stream_key(room), "-", "+", "COUNT", 1)
        return int(first[0][0].split(b"-")[0])


async def test_deep_resume_joins_archive_and_hot_buffer_without_hole_or_duplicate(
    redis_url: str, archive_store: ArchiveStore
) -> None:
    n = 450
    with trio.fail_after(90):
        async with archive_stack([redis_url], archive_store, **SMALL_HOT_BUFFER) as st, connect(
            st.ws_url(), st.token("alice")
        ) as sender:
            joined = await sender.join("deep")
            await send_all(sender, "deep", n)
            live = check_contiguous(await collect_batches(sender, "deep", n), 1)
            assert live == list(range(1, n + 1))
            await wait_archived(archive_store, "deep", n)
            seam = await hot_buffer_first_seq(redis_url, "deep")
            assert 10 < seam < n  # the hot buffer lost the start: the archive must serve it
            epoch = joined["epoch"]
            async with connect(st.ws_url(), st.token("bob")) as viewer:
                again = await viewer.join("deep", since={"epoch": epoch, "seq": 5})
                assert again["seq"] == n and again["epoch"] == epoch
                batches = await collect_batches(viewer, "deep", n)
                assert check_contiguous(batches, 6) == list(range(6, n + 1))
                assert not [f for f in viewer.frames if f["op"] == "reset"]
                texts = [m["body"]["text"] for b in batches for m in b["msgs"]]
                assert texts == [f"msg {i}" for i in range(5, n)]
                # ... then live, with no hole and no duplicate at that seam either.
                await send_all(sender, "deep", 5, start=n)
                more = await collect_batches(viewer, "deep", n + 5, after=n)
                assert check_contiguous(more, n + 1) == list(range(n + 1, n + 6))
            # A resume from the very start (seq 0) is served in full as well.
            async with connect(st.ws_url(), st.token("carol")) as viewer:
                await viewer.join("deep", since={"epoch": epoch, "seq": 0})
                batches = await collect_batches(viewer, "deep", n + 5)
                assert check_contiguous(batches, 1) == list(range(1, n + 6))


async def test_resume_older_than_both_answers_reset_too_old(
    redis_url: str, archive_store: ArchiveStore
) -> None:
    n = 300
    with trio.fail_after(60):
        async with archive_stack(
            [redis_url], archive_store, archiver=False, **SMALL_HOT_BUFFER
        ) as st, connect(st.ws_url(), st.token("alice")) as sender:
            joined = await sender.join("gone")
            await send_all(sender, "gone", n)
            await collect_batches(sender, "gone", n)
            assert await hot_buffer_first_seq(redis_url, "gone") > 10
            async with connect(st.ws_url(), st.token("bob")) as viewer:
                await viewer.join("gone", since={"epoch": joined["epoch"], "seq": 5})
                reset = await viewer.expect("reset")
                assert reset["reason"] == "too_old" and reset["seq"] == n


async def test_replay_endpoint_and_command(redis_url: str, archive_store: ArchiveStore) -> None:
    n = 60
    # offsets: 0, 500, 1000, ... with pairs sharing an offset (ordered by seq within it)
    with trio.fail_after(60):
        async with archive_stack([redis_url], archive_store) as st, connect(
            st.ws_url(), st.token("alice", name="Alice")
        ) as c:
            await c.join("vod")
            await send_all(c, "vod", n, offset=lambda i: (n - 1 - i) // 2 * 500)
            live = {m["seq"]: m for b in await collect_batches(c, "vod", n) for m in b["msgs"]}
            await wait_archived(archive_store, "vod", n)
            base = f"{st.http_url()}/v1/rooms/vod/replay"

            status, body = await get_json(f"{base}?from_ms=1000&to_ms=3000")
            assert status == 200 and body["room"] == "vod" and body["next"] is None
            expect = sorted(
                (m for m in live.values() if 1000 <= m["body"]["offset_ms"] < 3000),
                key=lambda m: (m["body"]["offset_ms"], m["seq"]),
            )
            assert body["msgs"] == expect and len(expect) == 8
            # Byte for byte what live viewers got (same field order too).
            _s, _h, raw = await request("GET", f"{base}?from_ms=1000&to_ms=1500")
            assert raw.count(b'"seq"') == 2
            for m in orjson.loads(raw)["msgs"]:
                assert orjson.dumps(m) == orjson.dumps(live[m["seq"]])

            # Paging with limit + next reads everything once, in order.
            seen: list[int] = []
            url = f"{base}?limit=7"
            while True:
                status, page = await get_json(url)
                assert status == 200
                seen += [m["seq"] for m in page["msgs"]]
                if page["next"] is None:
                    break
                nxt = page["next"]
                url = f"{base}?limit=7&from_ms={nxt['from_ms']}&after_seq={nxt['after_seq']}"
            everything = sorted(live.values(), key=lambda m: (m["body"]["offset_ms"], m["seq"]))
            assert seen == [m["seq"] for m in everything]

            for query in ("from_ms=-1", "limit=0", "limit=10001", "from_ms=5&to_ms=4",
                          "to_ms=x"):
                status, err = await get_json(f"{base}?{query}")
                assert status == 400 and err["error"]["code"] == "bad_request", query
            status, _h, _b = await request("POST", base, body=b"{}")
            assert status == 405

            # The command line, through the gateway.
            done = await trio.run_process(
                [*DANMAKU, "replay", "vod", "--from", "00:00:01", "--to", "00:00:03.000",
                 "--url", st.http_url(), "--json"],
                capture_stdout=True,
            )
            lines = [orjson.loads(line) for line in done.stdout.splitlines()]
            assert lines == expect
            done = await trio.run_process(
                [*DANMAKU, "replay", "vod", "--from", "0:01", "--to", "1.5", "--url",
                 st.http_url()],
                capture_stdout=True,
            )
            text = done.stdout.decode().splitlines()
            assert len(text) == 2
            assert all(line.startswith("[00:00:01.000] #") for line in text)
            assert all(" Alice: msg " in line for line in text)


async def test_without_an_archive_replay_and_dashboards_answer_503(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st:
            status, err = await get_json(f"{st.http_url()}/v1/rooms/r/replay")
            assert status == 503 and err["error"]["code"] == "archive_unavailable"
            status, _h, _b = await request("GET", f"{st.http_url()}/dashboards")
            assert status == 503


async def test_up_archives_and_replays_embedded(tmp_path: Any) -> None:
    """``danmaku up`` runs the archiver on the embedded engine; ``danmaku replay`` reads it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DANMAKU_")}
    async with running_up(tmp_path, env, until=b"Try:") as (proc, text):
        with trio.fail_after(60):
            assert "Archive    chdb:" in text, text
            http = re.search(r"(http://[\d.:]+)/v1/dispatch", text)
            assert http, text
            minted = await trio.run_process(
                [*DANMAKU, "token", "--user", "ann", "--name", "Ann", "--data-dir",
                 str(tmp_path)], capture_stdout=True, env=env,
            )
            token = minted.stdout.decode().strip()
            ws = http.group(1).replace("http", "ws") + "/ws"
            async with connect(ws, token) as c:
                await c.join("lobby")
                for i, offset in enumerate((61_000, 5_000, 62_500)):
                    ack = await c.acked(await c.send_text("lobby", f"hi {i}",
                                                          body={"offset_ms": offset}))
                    assert ack["op"] == "ack"
            while True:  # archived within a few hundred ms
                status, body = await get_json(f"{http.group(1)}/v1/rooms/lobby/replay")
                assert status == 200
                if len(body["msgs"]) == 3:
                    break
                await trio.sleep(0.1)
            done = await trio.run_process(
                [*DANMAKU, "replay", "lobby", "--from", "00:01:00", "--to", "00:02:00",
                 "--url", http.group(1)], capture_stdout=True, env=env,
            )
            assert done.stdout.decode().splitlines() == [
                "[00:01:01.000] #1 Ann: hi 0", "[00:01:02.500] #3 Ann: hi 2"]
            status, _h, page = await request("GET", f"{http.group(1)}/dashboards")
            assert status == 200 and page.count(b"<section") == len(load_dashboards())
            _s, _h, metrics = await request("GET", f"{http.group(1)}/metrics")
            assert b"danmaku_archive_rows_total 3.0" in metrics
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    assert (tmp_path / "archive").is_dir()
