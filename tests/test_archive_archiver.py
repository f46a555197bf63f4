"""The archiver on real Redis and both real ClickHouse engines: exactly-once archiving through a
crash between insert and XACK, a killed ``danmaku archiver`` process, and an archive outage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
import trio

from engine import keys
from engine.archive.archiver import GROUP, SHARD_STREAM, Archiver
from engine.archive.rows import seq_of
from engine.archive.service import open_archiver
from engine.archive.store import (
    ArchiveStore,
    AuditEntry,
    MessageRows,
    ModerationOutcome,
    open_store,
)
from engine.config import Settings
from engine.redis import RedisClient, ShardSet
from tests.archive_fixtures import (
    FAST_ARCHIVE,
    ClickHouseServer,
    archive_stack,
    eventually,
    server_dsn,
    wait_archived,
)
from tests.test_archive_store import entry
from tests.wsclient import connect

pytest_plugins = ["tests.archive_fixtures"]
pytestmark = pytest.mark.redis


async def feed(url: str, room: str, seqs: Sequence[int], **kw: Any) -> None:
    """XADD archive entries as the sequencing Lua step writes them."""
    async with RedisClient(url) as redis:
        commands: list[list[Any]] = []
        for seq in seqs:
            _id, fields = entry(seq, room=room, offset_ms=seq, **kw)
            commands.append(["XADD", SHARD_STREAM, "*", *fields])
        for i in range(0, len(commands), 1000):
            await redis.pipeline(commands[i : i + 1000])


async def stream_state(url: str) -> tuple[int, int]:
    """(entries in the archive stream, entries pending in the group)."""
    async with RedisClient(url) as redis:
        length = await redis.execute("XLEN", SHARD_STREAM)
        summary = await redis.execute("XPENDING", SHARD_STREAM, GROUP)
        return int(length), int(summary[0])


def stream_drained(url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await stream_state(url))[0] == 0

    return check


async def archived_beyond(store: ArchiveStore, seq: int) -> bool:
    return await store.max_seq("r1") >= seq


async def assert_exactly_once(store: ArchiveStore, room: str, n: int) -> None:
    got = await store.read_seq_range(room, 1, n + 10)
    assert [seq_of(m) for m in got] == list(range(1, n + 1))
    counted = await store.query(
        "SELECT count(), uniqExact(seq) FROM messages FINAL WHERE room = %(room)s",
        {"room": room},
    )
    assert counted.rows == [(n, n)]
    replayed = await store.replay(room, 0, 10**9, 10_000)
    assert [seq_of(m) for m in replayed] == list(range(1, n + 1))


class Crash(Exception):
    pass


async def test_crash_between_insert_and_xack_duplicates_nothing(
    redis_url: str, archive_store: ArchiveStore
) -> None:
    n = 1200
    await feed(redis_url, "r1", range(1, n + 1))
    settings = replace(FAST_ARCHIVE, node_id="arch-1")
    with trio.fail_after(60):
        async with ShardSet([redis_url]) as shards:
            crashing = Archiver(shards, archive_store, settings)
            batches = 0

            async def crash_on_second_batch(_table: str, _entries: list[Any]) -> None:
                nonlocal batches
                batches += 1
                if batches == 2:
                    raise Crash  # inserted, never acknowledged

            crashing.after_insert = crash_on_second_batch
            with pytest.raises(ExceptionGroup) as crashed:
                async with trio.open_nursery() as nursery:
                    await nursery.start(crashing.run)
            assert crashed.group_contains(Crash)
            length, pending = await stream_state(redis_url)
            # batch 1 acknowledged and deleted; batch 2 inserted but pending; batch 3 read
            # ahead (parsed while batch 2 was inserted) and pending too
            assert length == n - settings.batch_rows and pending == length
            # A restart with the same node id re-reads its pending entries first.
            restarted = Archiver(shards, archive_store, settings)
            async with trio.open_nursery() as nursery:
                await nursery.start(restarted.run)
                await eventually(stream_drained(redis_url))
                nursery.cancel_scope.cancel()
    await assert_exactly_once(archive_store, "r1", n)


async def test_another_archiver_takes_over_a_dead_ones_entries(
    redis_url: str, archive_store: ArchiveStore
) -> None:
    n = 700
    await feed(redis_url, "r1", range(1, n + 1))
    with trio.fail_after(60):
        async with ShardSet([redis_url]) as shards:
            dead = Archiver(shards, archive_store, replace(FAST_ARCHIVE, node_id="dead"))

            async def crash(_table: str, _entries: list[Any]) -> None:
                raise Crash

            dead.after_insert = crash
            with pytest.raises(ExceptionGroup) as crashed:
                async with trio.open_nursery() as nursery:
                    await nursery.start(dead.run)
            assert crashed.group_contains(Crash)
            assert (await stream_state(redis_url))[1] >= FAST_ARCHIVE.batch_rows
            # A different archiver claims them after claim_idle_ms (1 s here).
            alive = Settings(archive=replace(FAST_ARCHIVE, node_id="alive"))
            async with open_archiver(alive, shards, archive_store):
                await eventually(stream_drained(redis_url))
    await assert_exactly_once(archive_store, "r1", n)


class FlakyStore:
    """The embedded engine cannot be stopped from outside: this wraps a store whose inserts
    fail while ``down`` is set, as a stopped server's would."""

    def __init__(self, store: ArchiveStore) -> None:
        self._store = store
        self.down = False
        self.description = store.description

    async def _check(self) -> None:
        if self.down:
            await trio.sleep(0.01)
            raise ConnectionRefusedError("archive down (simulated)")

    async def insert(self, rows: MessageRows) -> None:
        await self._check()
        await self._store.insert(rows)

    async def insert_moderation(self, outcomes: Sequence[ModerationOutcome]) -> None:
        await self._check()
        await self._store.insert_moderation(outcomes)

    async def insert_audit(self, entries: Sequence[AuditEntry]) -> None:
        await self._check()
        await self._store.insert_audit(entries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class Outage:
    """The archive goes away and comes back: the test server is stopped and started again; the
    embedded engine (which cannot be stopped from outside) fails its inserts meanwhile."""

    def __init__(
        self, store: ArchiveStore, engine: str, request: pytest.FixtureRequest
    ) -> None:
        self.store = FlakyStore(store)
        self._server: ClickHouseServer | None = (
            request.getfixturevalue("clickhouse_server") if engine == "server" else None
        )

    def begin(self) -> None:
        if self._server is not None:
            self._server.stop()
        else:
            self.store.down = True

    def end(self) -> None:
        if self._server is not None:
            self._server.start()
        else:
            self.store.down = False


async def test_archive_outage_keeps_the_backlog_in_redis_then_catches_up(
    redis_url: str, archive_store: ArchiveStore, archive_engine: str,
    request: pytest.FixtureRequest,
) -> None:
    outage = Outage(archive_store, archive_engine, request)
    n1, n2 = 300, 900
    with trio.fail_after(90):
        async with ShardSet([redis_url]) as shards:
            archiver = Archiver(shards, outage.store, FAST_ARCHIVE, lag_every_s=0.1)  # type: ignore[arg-type]
            async with trio.open_nursery() as nursery:
                await nursery.start(archiver.run)
                await feed(redis_url, "r1", range(1, n1 + 1))
                await wait_archived(archive_store, "r1", n1)
                outage.begin()
                await feed(redis_url, "r1", range(n1 + 1, n1 + n2 + 1))
                while archiver.statistics().insert_errors < 3:  # noqa: ASYNC110 - in-process
                    await trio.sleep(0.05)
                await trio.sleep(0.3)
                length, _pending = await stream_state(redis_url)
                assert length == n2  # nothing dropped: the backlog waits in Redis
                backlog, pending, oldest = await archiver.lag()
                assert backlog == n2 and pending > 0 and oldest > 0
                metrics = archiver.metrics.render().decode()
                assert f"danmaku_archive_backlog {float(n2)}" in metrics
                assert "danmaku_archive_insert_errors_total" in metrics
                outage.end()  # the archiver catches up by itself
                await eventually(stream_drained(redis_url))
                nursery.cancel_scope.cancel()
    await assert_exactly_once(archive_store, "r1", n1 + n2)


async def test_killed_archiver_process_loses_and_duplicates_nothing(
    redis_url: str, clickhouse_server: ClickHouseServer, tmp_path: Any
) -> None:
    dsn = server_dsn(clickhouse_server)
    store = open_store(dsn)
    await store.ensure_schema()
    n = 6000
    await feed(redis_url, "r1", range(1, n + 1))
    env = {
        **os.environ, "DANMAKU_REDIS_URLS": redis_url, "DANMAKU_ARCHIVE_DSN": dsn,
        "DANMAKU_ARCHIVE_NODE_ID": "proc-1", "DANMAKU_ARCHIVE_METRICS_PORT": "0",
        "DANMAKU_ARCHIVE_BATCH_ROWS": "200", "DANMAKU_ARCHIVE_BATCH_MS": "20",
    }
    args = [sys.executable, "-m", "engine.cli", "archiver"]
    try:
        with trio.fail_after(90):
            first = await trio.lowlevel.open_process(
                args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            await eventually(lambda: archived_beyond(store, 1000), every_s=0.01)
            first.send_signal(signal.SIGKILL)  # mid-stream: some batches inserted, unacked
            await first.wait()
            length, _pending = await stream_state(redis_url)
            assert 0 < length < n
            second = await trio.lowlevel.open_process(
                args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                await eventually(stream_drained(redis_url))
            finally:
                second.send_signal(signal.SIGTERM)
                assert await second.wait() == 0
        await assert_exactly_once(store, "r1", n)
    finally:
        await store.aclose()


async def test_sequenced_messages_are_archived_and_reseed_a_lost_counter(
    redis_url: str, archive_store: ArchiveStore
) -> None:
    with trio.fail_after(60):
        async with archive_stack([redis_url], archive_store) as st, connect(
            st.ws_url(), st.token("alice", name="Alice")
        ) as c:
            joined = await c.join("live")
            for i in range(30):
                await c.acked(await c.send_text("live", f"hello {i}", body={"offset_ms": i}))
            await wait_archived(archive_store, "live", 30)
            got = await archive_store.read_seq_range("live", 1, 30, epoch=joined["epoch"])
            assert [orjson.loads(m)["body"]["text"] for m in got] == [
                f"hello {i}" for i in range(30)]
            row = await archive_store.query(
                "SELECT user, name, gateway, rt > 0 AND rt <= ts FROM messages FINAL "
                "WHERE room = 'live' AND seq = 1"
            )
            assert row.rows == [("alice", "Alice", st.gateways[0].node_id, 1)]
            # The room's counter and epoch are lost (a Redis shard without persistence
            # restarted): the next message continues above the archive's highest seq.
            async with RedisClient(redis_url) as redis:
                await redis.execute("DEL", keys.seq_key("live"), keys.epoch_key("live"),
                                    keys.stream_key("live"))
            ack = await c.acked(await c.send_text("live", "after the loss"))
            assert ack["op"] == "ack" and ack["seq"] == 31


async def test_archiver_finds_per_room_streams_on_a_redis_cluster(
    redis_cluster_url: str, archive_store: ArchiveStore
) -> None:
    rooms = ["c1", "c2", "c3", "c4"]
    with trio.fail_after(60):
        async with archive_stack(
            [redis_cluster_url], archive_store, redis={"cluster": True}
        ) as st, connect(st.ws_url(), st.token("alice")) as c:
            for room in rooms:
                await c.join(room)
            cmids = [await c.send_text(room, f"{room} {i}") for i in range(25) for room in rooms]
            for cmid in cmids:
                assert (await c.acked(cmid))["op"] == "ack"
            for room in rooms:
                await wait_archived(archive_store, room, 25)
                got = await archive_store.read_seq_range(room, 1, 25)
                assert [orjson.loads(m)["body"]["text"] for m in got] == [
                    f"{room} {i}" for i in range(25)]
            assert st.archivers[0].statistics().streams == len(rooms)


async def test_gateway_records_viewers_online_and_archiver_serves_metrics(
    redis_url: str, archive_store: ArchiveStore
) -> None:
    from engine.archive.metrics import ArchiverMetrics
    from engine.archive.service import serve_metrics
    from tests.httpclient import request

    with trio.fail_after(30):
        async with archive_stack([redis_url], archive_store) as st, connect(
            st.ws_url(), st.token("v1")
        ) as v1, connect(st.ws_url(), st.token("v2")) as v2:
            await v1.join("watched")
            await v2.join("watched")

            async def sampled() -> bool:
                got = await archive_store.query(
                    "SELECT gateway, room, max(online) FROM viewers_online "
                    "GROUP BY gateway, room"
                )
                return got.rows == [(st.gateways[0].node_id, "watched", 2)]

            await eventually(sampled, every_s=0.1)
    metrics = ArchiverMetrics()
    metrics.rows.inc(7)
    url = serve_metrics(metrics, "127.0.0.1", 0)
    status, _headers, body = await request("GET", url)
    assert status == 200 and b"danmaku_archive_rows_total 7.0" in body
