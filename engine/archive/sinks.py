"""What the archiver drains: one ``Sink`` per kind of stream (where it is, how a batch of its
entries becomes rows, which table they go to). Parsing is pure (no I/O).

==============  ===================  ============  =====  ==============================
sink = table    stream per shard     Cluster: any  XDEL   written by
==============  ===================  ============  =====  ==============================
``messages``    ``danmaku:arch``     ``*:arch``    yes    the sequencing Lua step
``moderation``  ``danmaku:modout``   ``*:modout``  yes    the worker, per refused message
``audit``       ``danmaku:audit``    ``*:audit``   no     moderator and admin actions
==============  ===================  ============  =====  ==============================

The audit stream is also what the admin API reads back (``read_audit``: its newest entries), so
archived audit entries are acknowledged but stay in the stream, capped by its ``MAXLEN``.

Entries a parser cannot use are counted as malformed and skipped (acknowledged with their
batch): one odd entry must never block a stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from engine import keys
from engine.archive.rows import entry_fields, rows_from_entries
from engine.archive.store import ArchiveStore, AuditEntry, MessageRows, ModerationOutcome

R = TypeVar("R", bound=Sized)

# Stream entries as XREADGROUP returns them: ``[id, [k1, v1, k2, v2, ...]]``.
Entries = Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Sink(Generic[R]):
    name: str  # the table, also the ``table`` label of the metrics
    stream: str  # the stream's name on each shard
    suffix: str  # under Redis Cluster: every stream whose name ends so (one per room)
    parse: Callable[[Entries], tuple[R, int]]  # -> (rows, malformed entries skipped)
    insert: Callable[[ArchiveStore, R], Awaitable[None]]
    delete: bool = True  # XDEL entries once archived (else they stay, capped by MAXLEN)


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def _uint(value: bytes | None, limit: int = 2**64 - 1) -> int | None:
    if value is None or not value.isdigit():
        return None
    return min(int(value), limit)


def outcomes_from_entries(entries: Entries) -> tuple[list[ModerationOutcome], int]:
    """``moderation`` rows of refused-message entries (fields r, u, code, ts, c, t, g; see
    ``rooms.moderation.RoomModeration.outcome_command``); also the number skipped."""
    out: list[ModerationOutcome] = []
    bad = 0
    for _id, fields in entries:
        f = entry_fields(fields) if fields is not None else {}
        ts = _uint(f.get(b"ts"))
        if not f.get(b"r") or not f.get(b"code") or ts is None:
            bad += 1
            continue
        out.append(ModerationOutcome(
            room=_text(f[b"r"]), user=_text(f.get(b"u")), code=_text(f[b"code"]), ts=ts,
            cmid=_text(f.get(b"c")), text=_text(f.get(b"t")), gateway=_text(f.get(b"g")),
        ))
    return out, bad


def audit_from_entries(entries: Entries) -> tuple[list[AuditEntry], int]:
    """``audit`` rows of audit log entries (``rooms.moderation_actions.audit_fields``: ts, actor,
    role, room, action, target, via, optional duration_s, reason, detail); also the number
    skipped."""
    out: list[AuditEntry] = []
    bad = 0
    for entry_id, fields in entries:
        f = entry_fields(fields) if fields is not None else {}
        ts = _uint(f.get(b"ts"))
        if not f.get(b"action") or ts is None:
            bad += 1
            continue
        out.append(AuditEntry(
            id=entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), ts=ts,
            actor=_text(f.get(b"actor")), role=_text(f.get(b"role")), room=_text(f.get(b"room")),
            action=_text(f[b"action"]), target=_text(f.get(b"target")),
            via=_text(f.get(b"via")), duration_s=_uint(f.get(b"duration_s"), 2**32 - 1) or 0,
            reason=_text(f.get(b"reason")), detail=_text(f.get(b"detail")),
        ))
    return out, bad


async def _insert_messages(store: ArchiveStore, rows: MessageRows) -> None:
    await store.insert(rows)


async def _insert_moderation(store: ArchiveStore, rows: list[ModerationOutcome]) -> None:
    await store.insert_moderation(rows)


async def _insert_audit(store: ArchiveStore, rows: list[AuditEntry]) -> None:
    await store.insert_audit(rows)


MESSAGES: Sink[MessageRows] = Sink(
    "messages", keys.ARCHIVE_STREAM, keys.ARCHIVE_SUFFIX, rows_from_entries, _insert_messages
)
MODERATION: Sink[list[ModerationOutcome]] = Sink(
    "moderation", keys.MODERATION_STREAM, keys.MODERATION_SUFFIX, outcomes_from_entries,
    _insert_moderation,
)
AUDIT: Sink[list[AuditEntry]] = Sink(
    "audit", keys.AUDIT_STREAM, keys.AUDIT_SUFFIX, audit_from_entries, _insert_audit,
    delete=False,
)
SINKS: tuple[Sink[Any], ...] = (MESSAGES, MODERATION, AUDIT)
