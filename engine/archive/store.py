"""The archive's interface (``ArchiveStore``), its row types, and ``open_store(dsn)``.

Two implementations live in ``archive_clickhouse``: the embedded engine (``chdb:///path``) and a
ClickHouse server (``http(s)://...``). Both speak the same SQL against the same portable schema
(``schema``); nothing outside this package knows which one it has.

Guarantees every implementation gives:

- ``insert`` is idempotent: re-inserting rows that are already there (an archiver that crashed
  between its insert and its XACK) never shows duplicates in any read of this interface or in the
  dashboards, because every read deduplicates by ``(room, seq)``. The same holds for
  ``insert_moderation`` and ``insert_audit`` (tables keyed by the whole entry, read ``FINAL``).
- Every method is a coroutine that runs the blocking ClickHouse call in a worker thread, so the
  trio loop never blocks; the embedded engine's calls are serialised (one engine per process).
- Message reads return the message JSON exactly as the sequencing step wrote it (byte-identical
  to what live viewers received).

Importing this module imports neither chdb nor clickhouse-connect: the gateway may hold an
``ArchiveReader`` without paying for them unless an archive is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from engine.errors import ConfigError

DEFAULT_DATABASE = "danmaku"

# A query parameter value (client-side binding: ``%(name)s`` in the SQL).
Param = str | int | float


@dataclass(slots=True)
class MessageRows:
    """Column-oriented rows of the ``messages`` table (one list per column, same length)."""

    room: list[str] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    epoch: list[str] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    user: list[str] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    mode: list[str] = field(default_factory=list)
    color: list[str] = field(default_factory=list)
    offset_ms: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    rt: list[int] = field(default_factory=list)
    gateway: list[str] = field(default_factory=list)
    hidden: list[int] = field(default_factory=list)
    msg: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seq)

    def columns(self) -> list[list[str] | list[int] | list[bytes]]:
        return [
            self.room, self.seq, self.epoch, self.id, self.user, self.name, self.kind,
            self.text, self.mode, self.color, self.offset_ms, self.ts, self.rt, self.gateway,
            self.hidden, self.msg,
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModerationOutcome:
    """A rejected message: who, where, why (the nack code) and when (server ms)."""

    room: str
    user: str
    code: str
    ts: int
    cmid: str = ""
    text: str = ""
    gateway: str = ""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A moderator or admin action, as the audit log recorded it (times in Unix ms).

    ``id`` is the audit stream entry's id: a re-inserted entry keeps it, so it shows once."""

    id: str
    ts: int
    actor: str
    role: str
    room: str
    action: str
    target: str = ""
    via: str = ""
    duration_s: int = 0  # 0 = none (permanent, or not a sanction)
    reason: str = ""
    detail: str = ""  # JSON ('' when none)


@dataclass(frozen=True, slots=True)
class ViewerSample:
    """Viewers of one room on one gateway at one moment (server ms)."""

    gateway: str
    room: str
    online: int
    ts: int


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[object, ...]]

    def dicts(self) -> list[dict[str, object]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class ArchiveReader(Protocol):
    """What the gateway needs: deep resume and replay."""

    async def max_seq(self, room: str) -> int:
        """The highest archived seq of ``room`` (0 when none)."""
        ...

    async def read_seq_range(
        self, room: str, first: int, last: int, *, epoch: str | None = None
    ) -> list[bytes]:
        """Message JSON of seqs ``first..last`` (inclusive) in seq order, each seq once.

        Seqs the archive does not hold are simply absent; the caller checks completeness.
        With ``epoch``, only messages sequenced in that epoch of the room. A hidden message
        (shadow-ban) comes back with its mark (``HIDDEN_MARK``) appended, as in the hot buffer.
        """
        ...

    async def replay(
        self, room: str, from_ms: int, to_ms: int, limit: int, *, after_seq: int = 0
    ) -> list[bytes]:
        """Message JSON with ``from_ms <= offset_ms < to_ms``, ordered by (offset_ms, seq).

        ``after_seq`` continues a page: messages at exactly ``offset_ms == from_ms`` with
        ``seq <= after_seq`` are skipped. At most ``limit`` messages. Hidden messages (shown
        to their sender only) are never replayed.
        """
        ...


class ArchiveStore(ArchiveReader, Protocol):
    """The archive: schema, inserts, reads and dashboard queries."""

    description: str  # the DSN without credentials, for logs

    async def ensure_schema(self) -> int:
        """Create or migrate the schema; returns the schema version now in force."""
        ...

    async def insert(self, rows: MessageRows) -> None:
        """Insert sequenced messages (idempotent by (room, seq)); raises on failure."""
        ...

    async def insert_moderation(self, outcomes: Sequence[ModerationOutcome]) -> None:
        """Insert refused messages (idempotent: a re-insert of the same outcome shows once)."""
        ...

    async def insert_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Insert audit log entries (idempotent by entry, as ``insert_moderation``)."""
        ...

    async def insert_viewers(self, samples: Sequence[ViewerSample]) -> None: ...

    async def query(self, sql: str, params: dict[str, Param] | None = None) -> QueryResult:
        """A read-only query with client-side ``%(name)s`` parameters (the dashboards)."""
        ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Dsn:
    """A parsed archive DSN."""

    kind: str  # "chdb" or "http"
    path: str = ""  # chdb: the data directory
    url: str = ""  # http: scheme://host:port
    username: str = "default"
    password: str = ""
    database: str = DEFAULT_DATABASE

    @property
    def description(self) -> str:
        where = self.path if self.kind == "chdb" else self.url
        return f"{self.kind}:{where} database={self.database}"


def parse_dsn(dsn: str) -> Dsn:
    """``chdb:///abs/path``, ``chdb://rel/path``, ``http(s)://[user[:pw]@]host[:port][/db]``.

    Both take ``?database=NAME`` (default ``danmaku``).
    """
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    database = (query.get("database") or [""])[0]
    scheme = parts.scheme.lower()
    if scheme == "chdb":
        path = unquote(parts.netloc + parts.path)
        if not path or path == "/":
            raise ConfigError(f"archive DSN {dsn!r}: chdb needs a data directory")
        return Dsn("chdb", path=path, database=database or DEFAULT_DATABASE)
    if scheme in {"http", "https"}:
        if not parts.hostname:
            raise ConfigError(f"archive DSN {dsn!r}: no host")
        port = parts.port or (8443 if scheme == "https" else 8123)
        db_from_path = parts.path.strip("/")
        return Dsn(
            "http",
            url=f"{scheme}://{parts.hostname}:{port}",
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            database=database or db_from_path or DEFAULT_DATABASE,
        )
    raise ConfigError(f"archive DSN {dsn!r}: expected chdb:///path or http(s)://host:port")


def open_store(dsn: str) -> ArchiveStore:
    """The store for a DSN (nothing connects before ``ensure_schema`` or the first call)."""
    parsed = parse_dsn(dsn)
    from engine.archive.archive_clickhouse import ChdbStore, HttpStore

    if parsed.kind == "chdb":
        return ChdbStore(parsed)
    return HttpStore(parsed)
