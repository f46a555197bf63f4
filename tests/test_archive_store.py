"""The archive store on both real engines (embedded chdb and a clickhouse-server process):
schema, idempotent inserts, seq-range reads, replay ordering and range edges."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.archive import schema
from engine.archive.rows import rows_from_entries, seq_of
from engine.archive.store import (
    ArchiveStore,
    AuditEntry,
    MessageRows,
    ModerationOutcome,
    ViewerSample,
    open_store,
    parse_dsn,
)
from engine.errors import ConfigError

pytest_plugins = ["tests.archive_fixtures"]


def message(
    seq: int, *, room: str = "r1", offset_ms: int = 0, user: str = "u1", kind: str = "danmaku",
    ts: int | None = None, text: str | None = None, hidden: bool = False,
) -> bytes:
    body = {"text": text or f"m{seq}", "mode": "scroll", "color": "#ffffff",
            "offset_ms": offset_ms}
    data = orjson.dumps(
        {"seq": seq, "id": f"id{seq}", "ts": ts if ts is not None else 1_000_000 + seq,
         "user": user, "name": user.upper(), "kind": kind, "body": body}
    )
    return data + (b"\n" if hidden else b"")


def entry(
    seq: int, *, room: str = "r1", epoch: str = "e1", rt: int | None = None, gw: str = "gw1",
    **kw: Any,
) -> tuple[bytes, list[bytes]]:
    msg = message(seq, room=room, **kw)
    ts = orjson.loads(msg)["ts"]
    extra = orjson.dumps({"rt": rt if rt is not None else ts - 3, "gw": gw})
    return (f"{seq}-0".encode(), [b"r", room.encode(), b"e", epoch.encode(), b"s",
                                  str(seq).encode(), b"m", msg, b"x", extra])


def rows(*entries: tuple[bytes, list[bytes]]) -> MessageRows:
    out, bad = rows_from_entries(entries)
    assert bad == 0
    return out


def test_dsn_parsing() -> None:
    d = parse_dsn("chdb:///var/lib/danmaku/archive")
    assert (d.kind, d.path, d.database) == ("chdb", "/var/lib/danmaku/archive", "danmaku")
    d = parse_dsn("http://bob:s3cret@ch.example:8124/analytics")
    assert (d.kind, d.url, d.username, d.password, d.database) == (
        "http", "http://ch.example:8124", "bob", "s3cret", "analytics")
    assert parse_dsn("https://ch.example?database=x").url == "https://ch.example:8443"
    assert parse_dsn("https://ch.example?database=x").database == "x"
    assert "s3cret" not in parse_dsn("http://bob:s3cret@h:1/db").description
    for bad in ("redis://x", "chdb://", "http:///nohost"):
        with pytest.raises(ConfigError):
            parse_dsn(bad)


def test_rows_from_entries_spreads_fields_and_skips_malformed() -> None:
    good = entry(7, offset_ms=1500, kind="gift", hidden=True, rt=999_000)
    odd = entry(8, kind="vote")  # a kind the schema does not know: stored as "other"
    bad = [(b"9-0", [b"r", b"r1", b"s", b"x"]), (b"10-0", [b"r", b"r1", b"s", b"10", b"m",
                                                            b"not json"]), (b"11-0", None)]
    out, skipped = rows_from_entries([good, odd, *bad])
    assert skipped == 3
    assert out.seq == [7, 8] and out.kind == ["gift", "other"] and out.hidden == [1, 0]
    assert out.offset_ms == [1500, 0] and out.rt == [999_000, 1_000_008 - 3]
    assert out.msg[0] == message(7, offset_ms=1500, kind="gift")  # the mark is a column
    assert out.user == ["u1", "u1"] and out.name == ["U1", "U1"] and out.gateway == ["gw1"] * 2
    assert seq_of(out.msg[0]) == 7


async def test_schema_is_versioned_and_idempotent(archive_store: ArchiveStore) -> None:
    assert await archive_store.ensure_schema() == schema.SCHEMA_VERSION
    assert await archive_store.ensure_schema() == schema.SCHEMA_VERSION
    result = await archive_store.query(
        "SELECT version, name FROM schema_migrations FINAL ORDER BY version"
    )
    assert [r[0] for r in result.rows] == [m.version for m in schema.MIGRATIONS]
    tables = await archive_store.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    )
    assert {r[0] for r in tables.rows} >= {
        "messages", "moderation", "viewers_online", "audit", "schema_migrations"}


async def test_reinserts_never_show_twice(archive_store: ArchiveStore) -> None:
    batch = rows(*(entry(s, offset_ms=s * 10) for s in range(1, 51)))
    await archive_store.insert(batch)
    await archive_store.insert(batch)  # an archiver that crashed before its XACK
    await archive_store.insert(rows(*(entry(s, offset_ms=s * 10) for s in range(40, 61))))
    assert await archive_store.max_seq("r1") == 60
    assert await archive_store.max_seq("nobody") == 0
    got = await archive_store.read_seq_range("r1", 1, 60)
    assert [seq_of(m) for m in got] == list(range(1, 61))
    assert got[0] == message(1, offset_ms=10)  # byte-identical message objects
    replayed = await archive_store.replay("r1", 0, 10_000, 1000)
    assert [seq_of(m) for m in replayed] == list(range(1, 61))
    dash = await archive_store.query(
        "SELECT count() FROM messages FINAL WHERE room = %(room)s", {"room": "r1"}
    )
    assert dash.rows == [(60,)]


async def test_seq_range_reads(archive_store: ArchiveStore) -> None:
    await archive_store.insert(rows(*(entry(s) for s in (1, 2, 3, 5, 6)), entry(4, hidden=True)))
    await archive_store.insert(rows(entry(1, room="r2"), entry(7, epoch="e2")))
    got = await archive_store.read_seq_range("r1", 2, 5)
    assert [seq_of(m) for m in got] == [2, 3, 4, 5]
    assert got[2] == message(4, hidden=True)  # the hidden mark comes back, as in Redis
    assert await archive_store.read_seq_range("r1", 5, 4) == []
    assert [seq_of(m) for m in await archive_store.read_seq_range("r1", 6, 9)] == [6, 7]
    only_e1 = await archive_store.read_seq_range("r1", 6, 9, epoch="e1")
    assert [seq_of(m) for m in only_e1] == [6]
    assert [seq_of(m) for m in await archive_store.read_seq_range("r2", 1, 9)] == [1]


async def test_replay_orders_by_offset_then_seq_with_half_open_range(
    archive_store: ArchiveStore,
) -> None:
    # seq: offset — offsets out of seq order, ties, a hidden message, another room
    offsets = {1: 5000, 2: 1000, 3: 3000, 4: 1000, 5: 2999, 6: 3000, 7: 6000, 8: 1000}
    await archive_store.insert(
        rows(*(entry(s, offset_ms=o, hidden=(s == 8)) for s, o in offsets.items()),
             entry(9, room="other", offset_ms=1000))
    )

    async def seqs(lo: int, hi: int, limit: int = 100, after: int = 0) -> list[int]:
        got = await archive_store.replay("r1", lo, hi, limit, after_seq=after)
        return [seq_of(m) for m in got]

    assert await seqs(0, 10_000) == [2, 4, 5, 3, 6, 1, 7]  # hidden seq 8 is never replayed
    assert await seqs(1000, 3000) == [2, 4, 5]  # from inclusive, to exclusive
    assert await seqs(1001, 3001) == [5, 3, 6]
    assert await seqs(3000, 3000) == []
    assert await seqs(6000, 6001) == [7]
    assert await seqs(0, 10_000, limit=3) == [2, 4, 5]
    # paging: continue after (offset 1000, seq 2) -> seq 4 at the same offset comes next
    assert await seqs(1000, 10_000, limit=2, after=2) == [4, 5]
    assert await seqs(3000, 10_000, limit=10, after=3) == [6, 1, 7]
    assert await archive_store.replay("nobody", 0, 10_000, 10) == []


async def test_moderation_and_viewer_samples(archive_store: ArchiveStore) -> None:
    outcomes = [ModerationOutcome("r1", "u1", "muted", 1000, cmid="c1"),
                ModerationOutcome("r1", "u2", "filtered", 1001, cmid="c2", text="bad")]
    await archive_store.insert_moderation(outcomes)
    await archive_store.insert_moderation(outcomes)  # idempotent too
    await archive_store.insert_viewers([ViewerSample("gw1", "r1", 10, 1000)])
    mod = await archive_store.query(
        "SELECT code, count() FROM moderation FINAL GROUP BY code ORDER BY code"
    )
    assert mod.rows == [("filtered", 1), ("muted", 1)]
    viewers = await archive_store.query("SELECT gateway, room, online, ts FROM viewers_online")
    assert viewers.dicts() == [{"gateway": "gw1", "room": "r1", "online": 10, "ts": 1000}]


async def test_audit_entries_show_once(archive_store: ArchiveStore) -> None:
    entries = [
        AuditEntry("1-0", 1000, "host", "streamer", "r1", "mute", "u1", "ws", 600, "rude"),
        AuditEntry("1-1", 1000, "host", "streamer", "r1", "config", via="ws",
                   detail='{"slow_s":5}'),
        AuditEntry("1-0", 1000, "root", "admin", "", "revoke", "u2", "http", reason="leak"),
    ]
    await archive_store.insert_audit(entries)
    await archive_store.insert_audit(entries[:2])  # an archiver that crashed before its XACK
    got = await archive_store.query(
        "SELECT id, ts, actor, role, room, action, target, via, duration_s, reason, detail "
        "FROM audit FINAL ORDER BY room, ts, id"
    )
    assert got.rows == [
        ("1-0", 1000, "root", "admin", "", "revoke", "u2", "http", 0, "leak", ""),
        ("1-0", 1000, "host", "streamer", "r1", "mute", "u1", "ws", 600, "rude", ""),
        ("1-1", 1000, "host", "streamer", "r1", "config", "", "ws", 0, "", '{"slow_s":5}'),
    ]


async def test_migration_2_applies_to_a_store_made_at_version_1(
    archive_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(archive_dsn)
    try:
        with monkeypatch.context() as m:  # a store made by the release before the audit table
            m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
            assert await store.ensure_schema() == 1
        await store.insert_moderation([ModerationOutcome("r1", "u1", "muted", 1000)])
        tables = "SELECT name FROM system.tables WHERE database = currentDatabase()"
        assert "audit" not in {r[0] for r in (await store.query(tables)).rows}
        assert await store.ensure_schema() == 2
        versions = await store.query(
            "SELECT version, name FROM schema_migrations FINAL ORDER BY version")
        assert versions.rows == [(m.version, m.name) for m in schema.MIGRATIONS[:2]]
        assert "audit" in {r[0] for r in (await store.query(tables)).rows}
        kept = await store.query("SELECT user, code FROM moderation FINAL")
        assert kept.rows == [("u1", "muted")]
        await store.insert_audit([AuditEntry("1-0", 1000, "host", "streamer", "r1", "ban")])
        assert (await store.query("SELECT count() FROM audit FINAL")).rows == [(1,)]
        assert await store.ensure_schema() == 2  # nothing more to apply
    finally:
        await store.aclose()


async def test_unreachable_archive_raises_a_clear_error() -> None:
    from engine.archive.archive_clickhouse import ArchiveUnavailable

    store = open_store("http://127.0.0.1:9/db")
    with pytest.raises(ArchiveUnavailable):
        await store.ensure_schema()
    with pytest.raises(ArchiveUnavailable):
        await store.max_seq("r1")
    assert not await store.ping()
    await store.aclose()
