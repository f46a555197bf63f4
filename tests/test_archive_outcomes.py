"""Moderation outcomes and the audit log into the archive, on real Redis and both real ClickHouse
engines: refused messages reach the ``moderation`` table and moderator actions the ``audit``
table exactly once, through a crash between insert and XACK, a takeover, an archive outage and
a Redis Cluster; the audit stream keeps its entries for the admin API."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest
import trio

from engine import keys
from engine.archive.archiver import GROUP, Archiver, Lag
from engine.archive.dashboards import load_dashboards, run_dashboard, window_params
from engine.archive.service import open_archiver
from engine.archive.sinks import audit_from_entries, outcomes_from_entries
from engine.archive.store import ArchiveStore
from engine.config import Settings
from engine.ingress import IngressMessage, Reply
from engine.redis import RedisClient, RedisReplyError, ShardSet
from engine.tokens import Identity
from rooms.moderation import RoomModeration
from rooms.moderation_actions import audit_fields, audit_key
from rooms.worker import message_tail
from tests.archive_fixtures import FAST_ARCHIVE, archive_stack, eventually
from tests.httpclient import get_json, request
from tests.test_archive_archiver import Crash, Outage
from tests.test_moderation import ok, send, streamer
from tests.wsclient import connect

pytest_plugins = ["tests.archive_fixtures"]

MODOUT = keys.MODERATION_STREAM
AUDIT = keys.AUDIT_STREAM


# ---- the writers' entries, parsed (no I/O) ----------------------------------------------------
def outcome_xadd(i: int, *, room: str = "r", code: str = "muted") -> list[Any]:
    """The XADD the worker makes for a refused message (``RoomModeration.outcome_command``)."""
    msg = IngressMessage(room, f"u{i}", f"U{i}", "viewer", f"c{i}", "danmaku",
                         orjson.dumps({"text": f"t{i}"}), "gw1", "s1", 0)
    reply = Reply("s1", room, f"c{i}", code=code, message="refused")
    return RoomModeration(tail_of=message_tail).outcome_command(msg, reply, f"t{i}",
                                                                cluster=False)


def audit_xadd(i: int, *, room: str | None = "r") -> list[Any]:
    """An audit entry as rooms/moderation_actions.py writes it."""
    actor = Identity(f"m{i}", f"M{i}", role="moderator")
    return ["XADD", audit_key(room, cluster=False), "*", *audit_fields(
        actor=actor, role="moderator", room=room, action="mute", target=f"u{i}", via="ws",
        duration_s=60, reason="rude", detail={"n": i},
    )]


def as_entry(entry_id: bytes, command: list[Any]) -> tuple[bytes, list[bytes]]:
    """An XADD's field list as XREADGROUP returns it."""
    start = command.index("*") + 1
    return entry_id, [str(v).encode() if not isinstance(v, bytes) else v
                      for v in command[start:]]


def test_outcome_and_audit_entries_parse_into_rows_and_malformed_ones_are_skipped() -> None:
    outcomes, bad = outcomes_from_entries([
        as_entry(b"1-0", outcome_xadd(1, code="filtered")),
        (b"2-0", [b"r", b"r", b"u", b"x"]),  # no code, no ts
        (b"3-0", [b"r", b"r", b"code", b"muted", b"ts", b"soon"]),
        (b"4-0", None),  # deleted while pending
    ])
    assert bad == 3 and len(outcomes) == 1
    o = outcomes[0]
    assert (o.room, o.user, o.code, o.cmid, o.text, o.gateway) == (
        "r", "u1", "filtered", "c1", "t1", "gw1")
    assert abs(o.ts - _now_ms()) < 60_000
    entries, bad = audit_from_entries([
        as_entry(b"5-1", audit_xadd(1)),
        as_entry(b"6-0", audit_xadd(2, room=None)),
        (b"7-0", [b"ts", b"1", b"actor", b"a"]),  # no action
    ])
    assert bad == 1
    first, second = entries
    assert (first.id, first.actor, first.role, first.room, first.action, first.target,
            first.via, first.duration_s, first.reason, orjson.loads(first.detail)) == (
        "5-1", "m1", "moderator", "r", "mute", "u1", "ws", 60, "rude", {"n": 1})
    assert second.room == "" and second.id == "6-0"


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---- helpers on real Redis ----------------------------------------------------------------------
async def stream_state(url: str, stream: str) -> tuple[int, int]:
    """(entries in the stream, entries pending in the archiver group)."""
    async with RedisClient(url) as redis:
        length = await redis.execute("XLEN", stream)
        try:
            summary = await redis.execute("XPENDING", stream, GROUP)
        except RedisReplyError:  # no group yet
            return int(length), 0
        return int(length), int(summary[0])


def state_is(url: str, stream: str, want: tuple[int, int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await stream_state(url, stream) == want

    return check


async def final_count(store: ArchiveStore, table: str) -> int:
    result = await store.query(f"SELECT count() FROM {table} FINAL")
    return int(result.rows[0][0])  # type: ignore[call-overload]


def count_is(store: ArchiveStore, table: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await final_count(store, table) == n

    return check


def crash_on(table: str) -> Callable[[str, list[Any]], Awaitable[None]]:
    async def hook(got: str, _entries: list[Any]) -> None:
        if got == table:
            raise Crash  # inserted, never acknowledged

    return hook


async def run_until_crash(archiver: Archiver) -> None:
    with pytest.raises(ExceptionGroup) as crashed:
        async with trio.open_nursery() as nursery:
            await nursery.start(archiver.run)
    assert crashed.group_contains(Crash)


@pytest.mark.redis
async def test_refused_messages_reach_the_moderation_table_once_through_a_crash(
    redis_url: str, archive_store: ArchiveStore
) -> None:
    with trio.fail_after(90):
        async with archive_stack([redis_url], archive_store, archiver=False) as st, connect(
            st.ws_url(), streamer(st)
        ) as host, connect(st.ws_url(), st.token("troll")) as troll:
            await host.join("r")
            await troll.join("r")
            await ok(host, "r", "words_add", words=["spoiler"])
            await ok(host, "r", "config", config={"filter": "deny"})
            assert (await send(troll, "r", "a spoiler!"))["code"] == "filtered"
            await ok(host, "r", "mute", user="troll", duration_s=600)
            for i in range(3):
                assert (await send(troll, "r", f"muted {i}"))["code"] == "muted"
            assert (await send(host, "r", "sequenced, not refused"))["op"] == "ack"
            gateway = st.gateways[0].node_id
            await eventually(state_is(redis_url, MODOUT, (4, 0)))
            settings = replace(FAST_ARCHIVE, node_id="arch-1")
            async with ShardSet([redis_url]) as shards:
                crashing = Archiver(shards, archive_store, settings)
                crashing.after_insert = crash_on("moderation")
                await run_until_crash(crashing)
                # Inserted, but still in the stream and pending: the crash hit before the XACK.
                assert await stream_state(redis_url, MODOUT) == (4, 4)
                assert await final_count(archive_store, "moderation") == 4
                # A restart with the same node id re-reads its pending entries and inserts them
                # again; the table shows each once.
                restarted = Archiver(shards, archive_store, settings)
                async with trio.open_nursery() as nursery:
                    await nursery.start(restarted.run)
                    await eventually(state_is(redis_url, MODOUT, (0, 0)))
                    await eventually(state_is(redis_url, AUDIT, (3, 0)))
                    nursery.cancel_scope.cancel()
                assert restarted.statistics().table_rows["moderation"] == 4
    rows = await archive_store.query(
        "SELECT room, user, code, text, cmid != '', gateway FROM moderation FINAL "
        "ORDER BY ts, text"
    )
    assert rows.rows == [
        ("r", "troll", "filtered", "a spoiler!", 1, gateway),
        ("r", "troll", "muted", "muted 0", 1, gateway),
        ("r", "troll", "muted", "muted 1", 1, gateway),
        ("r", "troll", "muted", "muted 2", 1, gateway),
    ]
    assert await final_count(archive_store, "moderation") == 4
    assert await archive_store.max_seq("r") == 1  # the host's message went to `messages`
    # The dashboard over the table counts each refusal once.
    by_code = next(d for d in load_dashboards() if d.name == "moderation_by_code")
    result = await run_dashboard(archive_store, by_code, window_params(since="1h", room="r"))
    assert result.rows == [("muted", 3, 1, 1), ("filtered", 1, 1, 1)]
    # The actions that led there are in the audit table, once each.
    audit = await archive_store.query("SELECT action, actor FROM audit FINAL ORDER BY ts, id")
    assert audit.rows == [("words_add", "host"), ("config", "host"), ("mute", "host")]


async def _post(url: str, token: str, obj: Any) -> int:
    status, _h, _body = await request("POST", url, json=obj,
                                      headers={"authorization": f"Bearer {token}"})
    return status


AUDIT_COLUMNS = "action, actor, role, room, target, via, duration_s, reason, detail"


@pytest.mark.redis
async def test_moderator_actions_reach_the_audit_table_once_and_stay_in_the_stream(
    redis_url: str, archive_store: ArchiveStore
) -> None:
    with trio.fail_after(90):
        async with archive_stack([redis_url], archive_store, archiver=False) as st, connect(
            st.ws_url(), streamer(st)
        ) as host:
            admin = st.token("root", role="admin")
            rooms = st.http_url() + "/v1/admin/rooms/r"
            assert await _post(rooms + "/actions", admin,
                               {"action": "ban", "user": "x", "reason": "spam"}) == 200
            await ok(host, "r", "mute", user="y", duration_s=60, reason="rude")  # the `mod` op
            await ok(host, "r", "config", config={"slow_s": 5})
            assert await _post(st.http_url() + "/v1/admin/users/z/kick", admin, {}) == 200
            expected = [
                ("ban", "root", "admin", "r", "x", "http", 0, "spam", ""),
                ("mute", "host", "streamer", "r", "y", "ws", 60, "rude", ""),
                ("config", "host", "streamer", "r", "", "ws", 0, "", '{"slow_s":5}'),
                ("kick", "root", "admin", "", "z", "http", 0, "kick", ""),
            ]
            await eventually(state_is(redis_url, AUDIT, (4, 0)))
            async with ShardSet([redis_url]) as shards:
                dead = Archiver(shards, archive_store, replace(FAST_ARCHIVE, node_id="dead"))
                dead.after_insert = crash_on("audit")
                await run_until_crash(dead)
                assert await stream_state(redis_url, AUDIT) == (4, 4)
                # Another archiver takes the dead one's entries over after claim_idle_ms.
                alive = Settings(archive=replace(FAST_ARCHIVE, node_id="alive"))
                async with open_archiver(alive, shards, archive_store) as archiver:
                    await eventually(state_is(redis_url, AUDIT, (4, 0)))
                    assert archiver.statistics().table_rows["audit"] == 4  # inserted again
                    # Archived entries stay in the stream, so they are no backlog.
                    assert (await archiver.lag_by_table())["audit"] == Lag()
                    # A new action while the archiver runs follows on its own.
                    assert await _post(rooms + "/actions", admin,
                                       {"action": "unban", "user": "x"}) == 200
                    await eventually(count_is(archive_store, "audit", 5))
                    await eventually(state_is(redis_url, AUDIT, (5, 0)))
            expected.append(("unban", "root", "admin", "r", "x", "http", 0, "", ""))
            got = await archive_store.query(f"SELECT {AUDIT_COLUMNS} FROM audit FINAL "
                                            "ORDER BY ts, id")
            assert got.rows == expected
            # The admin API still reads the log from Redis, newest first.
            status, room_log = await get_json(
                rooms + "/audit", headers={"authorization": "Bearer " + admin})
            assert status == 200
            assert [e["action"] for e in room_log["entries"]] == [
                "unban", "config", "mute", "ban"]
            status, all_log = await get_json(
                st.http_url() + "/v1/admin/audit", headers={"authorization": "Bearer " + admin})
            assert [e["action"] for e in all_log["entries"]] == [
                "unban", "kick", "config", "mute", "ban"]
            # Stream ids are kept: each archived row names its entry.
            ids = await archive_store.query("SELECT id FROM audit FINAL ORDER BY ts, id")
            assert sorted(r[0] for r in ids.rows) == sorted(
                e["id"] for e in all_log["entries"])


@pytest.mark.redis
async def test_archive_outage_keeps_outcomes_and_audit_in_redis_then_catches_up(
    redis_url: str, archive_store: ArchiveStore, archive_engine: str,
    request: pytest.FixtureRequest,
) -> None:
    outage = Outage(archive_store, archive_engine, request)
    n_out, n_audit = 250, 120
    with trio.fail_after(120):
        async with ShardSet([redis_url]) as shards, RedisClient(redis_url) as redis:
            archiver = Archiver(shards, outage.store, FAST_ARCHIVE, lag_every_s=0.05)  # type: ignore[arg-type]
            async with trio.open_nursery() as nursery:
                await nursery.start(archiver.run)
                await redis.pipeline([outcome_xadd(i) for i in range(10)]
                                     + [audit_xadd(i) for i in range(5)])
                await eventually(count_is(archive_store, "moderation", 10))
                await eventually(count_is(archive_store, "audit", 5))
                outage.begin()
                await redis.pipeline([outcome_xadd(i) for i in range(10, 10 + n_out)]
                                     + [audit_xadd(i) for i in range(5, 5 + n_audit)])
                while archiver.statistics().insert_errors < 3:  # noqa: ASYNC110 - in-process
                    await trio.sleep(0.05)
                # Nothing dropped: the backlog waits in Redis, and the lag says so per table.
                assert (await stream_state(redis_url, MODOUT))[0] == n_out
                assert (await stream_state(redis_url, AUDIT))[0] == 5 + n_audit
                lag = await archiver.lag_by_table()
                assert lag["moderation"].backlog == n_out and lag["audit"].backlog == n_audit
                assert lag["moderation"].oldest_s > 0 and lag["audit"].oldest_s > 0
                assert lag["messages"] == Lag()

                async def metrics_show_it() -> bool:
                    text = archiver.metrics.render().decode()
                    return (f'danmaku_archive_table_backlog{{table="audit"}} {float(n_audit)}'
                            in text and 'danmaku_archive_table_backlog{table="moderation"} '
                            f"{float(n_out)}" in text)

                await eventually(metrics_show_it)
                outage.end()  # the archiver catches up by itself
                await eventually(state_is(redis_url, MODOUT, (0, 0)))
                await eventually(state_is(redis_url, AUDIT, (5 + n_audit, 0)))
                lag = await archiver.lag_by_table()
                assert lag["moderation"] == Lag() and lag["audit"] == Lag()
                nursery.cancel_scope.cancel()
    assert await final_count(archive_store, "moderation") == 10 + n_out
    assert await final_count(archive_store, "audit") == 5 + n_audit
    users = await archive_store.query("SELECT uniqExact(user) FROM moderation FINAL")
    assert users.rows == [(10 + n_out,)]


@pytest.mark.redis
async def test_outcomes_and_audit_are_found_on_a_redis_cluster(
    redis_cluster_url: str, archive_store: ArchiveStore
) -> None:
    rooms = ["c1", "c2", "c3"]
    with trio.fail_after(60):
        async with archive_stack(
            [redis_cluster_url], archive_store, redis={"cluster": True}
        ) as st, connect(st.ws_url(), st.token("host", role="streamer")) as host, connect(
            st.ws_url(), st.token("u")
        ) as user:
            for room in rooms:
                await host.join(room)
                await user.join(room)
                await ok(host, room, "ban", user="u")
                assert (await send(user, room, f"in {room}"))["code"] == "banned"
            await eventually(count_is(archive_store, "moderation", len(rooms)))
            await eventually(count_is(archive_store, "audit", len(rooms)))
            got = await archive_store.query(
                "SELECT room, user, code, text FROM moderation FINAL ORDER BY room")
            assert got.rows == [(room, "u", "banned", f"in {room}") for room in rooms]
            audit = await archive_store.query(
                "SELECT room, action, target FROM audit FINAL ORDER BY room")
            assert audit.rows == [(room, "ban", "u") for room in rooms]
            # One stream per room and kind: {r:<room>}:modout and {r:<room>}:audit.
            assert st.archivers[0].statistics().streams == 2 * len(rooms)

