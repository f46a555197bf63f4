"""``ArchiveStore`` over clickhouse-connect: the embedded engine (chdb) and a ClickHouse server.

Both implementations share the SQL (``schema``) and this module's code; they differ in how the
client is made and in how many calls may run at once:

- ``ChdbStore`` (``chdb:///path``): the engine lives in this process. chdb allows one data path
  per process, so all of a process's archive work (gateway reads, archiver inserts, worker floor
  look-ups) goes through ONE store; its calls run one at a time in worker threads.
- ``HttpStore`` (``http(s)://``): one thread-safe client (no HTTP session, a urllib3 pool) used by
  up to ``max_threads`` worker threads at once. Old servers are handled in ``_compat`` when the
  client is made, never on the insert or read path.

A failed call raises (``ArchiveUnavailable`` wraps whatever the driver raised); the client is
made again on the next call after a connection-level failure, so a server restart heals itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from engine.archive import schema
from engine.archive.rows import HIDDEN_MARK
from engine.archive.store import (
    AuditEntry,
    Dsn,
    MessageRows,
    ModerationOutcome,
    Param,
    QueryResult,
    ViewerSample,
)
from engine.errors import DanmakuError

log = logging.getLogger("danmaku.archive")

T = TypeVar("T")

_MESSAGE_NAMES = [name for name, _type in schema.MESSAGE_COLUMNS]
_MESSAGE_TYPES = [type_ for _name, type_ in schema.MESSAGE_COLUMNS]
_MODERATION_NAMES = [name for name, _type in schema.MODERATION_COLUMNS]
_MODERATION_TYPES = [type_ for _name, type_ in schema.MODERATION_COLUMNS]
_VIEWER_NAMES = [name for name, _type in schema.VIEWER_COLUMNS]
_VIEWER_TYPES = [type_ for _name, type_ in schema.VIEWER_COLUMNS]
_AUDIT_NAMES = [name for name, _type in schema.AUDIT_COLUMNS]
_AUDIT_TYPES = [type_ for _name, type_ in schema.AUDIT_COLUMNS]


class ArchiveUnavailable(DanmakuError):
    """The archive could not answer (server down, engine error); the call may be retried."""


def _lines(data: bytes) -> list[bytes]:
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


class _ClickHouseStore:
    """The shared body of both stores; subclasses make the client and set the concurrency."""

    max_threads = 1

    def __init__(self, dsn: Dsn) -> None:
        self.dsn = dsn
        self.description = dsn.description
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(self.max_threads)
        self._closed = False

    # ---- subclass hooks ----------------------------------------------------------------------
    def _make_client(self, database: str | None) -> Any:
        raise NotImplementedError

    # ---- plumbing ----------------------------------------------------------------------------
    def _client_sync(self) -> Any:
        with self._client_lock:
            if self._closed:
                raise ArchiveUnavailable("the archive store is closed")
            if self._client is None:
                self._client = self._make_client(self.dsn.database)
            return self._client

    def _drop_client(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing a broken client must not mask the real error
                log.debug("closing the ClickHouse client failed: %s", exc)

    async def _run(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` in a worker thread; wrap driver errors as ArchiveUnavailable."""

        def call() -> T:
            client = self._client_sync()
            try:
                return fn(client)
            except Exception as exc:
                if _is_connection_error(exc):
                    self._drop_client()
                raise

        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except ArchiveUnavailable:
            raise
        except Exception as exc:
            raise ArchiveUnavailable(f"{self.description}: {type(exc).__name__}: {exc}") from exc

    # ---- schema ------------------------------------------------------------------------------
    async def ensure_schema(self) -> int:
        def bootstrap() -> None:
            # The database must exist before a client can use it as its default.
            client = self._make_client(None)
            try:
                client.command(f"CREATE DATABASE IF NOT EXISTS `{self.dsn.database}`")
            finally:
                client.close()

        try:
            await trio.to_thread.run_sync(bootstrap, limiter=self._limiter)
        except Exception as exc:
            raise ArchiveUnavailable(f"{self.description}: {type(exc).__name__}: {exc}") from exc
        return await self._run(_migrate)

    # ---- writes ------------------------------------------------------------------------------
    async def insert(self, rows: MessageRows) -> None:
        if not len(rows):
            await trio.lowlevel.checkpoint()
            return
        columns = rows.columns()
        await self._run(
            lambda c: c.insert(
                "messages", columns, column_names=_MESSAGE_NAMES,
                column_type_names=_MESSAGE_TYPES, column_oriented=True,
            )
        )

    async def insert_moderation(self, outcomes: Sequence[ModerationOutcome]) -> None:
        if not outcomes:
            await trio.lowlevel.checkpoint()
            return
        data = [[o.room, o.user, o.code, o.ts, o.cmid, o.text, o.gateway] for o in outcomes]
        await self._run(
            lambda c: c.insert(
                "moderation", data, column_names=_MODERATION_NAMES,
                column_type_names=_MODERATION_TYPES,
            )
        )

    async def insert_audit(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            await trio.lowlevel.checkpoint()
            return
        data = [
            [e.room, e.ts, e.id, e.actor, e.role, e.action, e.target, e.via, e.duration_s,
             e.reason, e.detail]
            for e in entries
        ]
        await self._run(
            lambda c: c.insert(
                "audit", data, column_names=_AUDIT_NAMES, column_type_names=_AUDIT_TYPES,
            )
        )

    async def insert_viewers(self, samples: Sequence[ViewerSample]) -> None:
        if not samples:
            await trio.lowlevel.checkpoint()
            return
        data = [[s.gateway, s.room, s.online, s.ts] for s in samples]
        await self._run(
            lambda c: c.insert(
                "viewers_online", data, column_names=_VIEWER_NAMES,
                column_type_names=_VIEWER_TYPES,
            )
        )

    # ---- reads -------------------------------------------------------------------------------
    async def max_seq(self, room: str) -> int:
        data = await self._run(
            lambda c: c.raw_query(schema.SQL_MAX_SEQ, parameters={"room": room}, fmt="TSVRaw")
        )
        text = bytes(data).strip()
        return int(text) if text else 0

    async def read_seq_range(
        self, room: str, first: int, last: int, *, epoch: str | None = None
    ) -> list[bytes]:
        if last < first:
            await trio.lowlevel.checkpoint()
            return []
        params: dict[str, Param] = {"room": room, "first": first, "last": last}
        if epoch is not None:
            params["epoch"] = epoch
        sql = schema.SQL_SEQ_RANGE.format(
            epoch=" AND epoch = %(epoch)s" if epoch is not None else ""
        )
        data = await self._run(lambda c: c.raw_query(sql, parameters=params, fmt="TSVRaw"))
        # "<hidden>\t<msg>" per line: the mark goes back on, as the hot buffer has it.
        return [
            line[2:] + HIDDEN_MARK if line[:1] == b"1" else line[2:]
            for line in _lines(bytes(data))
        ]

    async def replay(
        self, room: str, from_ms: int, to_ms: int, limit: int, *, after_seq: int = 0
    ) -> list[bytes]:
        if limit <= 0 or to_ms <= from_ms:
            await trio.lowlevel.checkpoint()
            return []
        params: dict[str, Param] = {
            "room": room, "from_ms": from_ms, "to_ms": to_ms, "limit": limit,
            "after_seq": after_seq,
        }
        data = await self._run(
            lambda c: c.raw_query(schema.SQL_REPLAY, parameters=params, fmt="TSVRaw")
        )
        return _lines(bytes(data))

    async def query(self, sql: str, params: dict[str, Param] | None = None) -> QueryResult:
        def run(c: Any) -> QueryResult:
            result = c.query(sql, parameters=params or None)
            return QueryResult(tuple(result.column_names), [tuple(r) for r in result.result_rows])

        return await self._run(run)

    async def ping(self) -> bool:
        try:
            data = await self._run(lambda c: c.raw_query("SELECT 1", fmt="TSVRaw"))
        except ArchiveUnavailable:
            return False
        return bytes(data).strip() == b"1"

    async def aclose(self) -> None:
        self._closed = True
        await trio.to_thread.run_sync(self._drop_client, limiter=self._limiter)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def _migrate(client: Any) -> int:
    client.command(schema.MIGRATIONS_TABLE_DDL)
    text = bytes(client.raw_query("SELECT max(version) FROM schema_migrations", fmt="TSVRaw"))
    current = int(text.strip() or 0)
    for migration in schema.MIGRATIONS:
        if migration.version <= current:
            continue
        log.info("archive schema: applying %d (%s)", migration.version, migration.name)
        for statement in migration.statements:
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, int(time.time() * 1000)]],
            column_names=["version", "name", "applied_ms"],
            column_type_names=["UInt32", "String", "UInt64"],
        )
        current = migration.version
    return current


def _is_connection_error(exc: Exception) -> bool:
    from clickhouse_connect.driver.exceptions import OperationalError

    return isinstance(exc, OperationalError | OSError)


class ChdbStore(_ClickHouseStore):
    """The embedded engine: ClickHouse inside this process, data under ``dsn.path``."""

    max_threads = 1  # one engine per process: serialise every call

    def _make_client(self, database: str | None) -> Any:
        import clickhouse_connect

        return clickhouse_connect.get_client(dsn="chdb://" + _abs(self.dsn.path), database=database)


class HttpStore(_ClickHouseStore):
    """A ClickHouse server over HTTP(S); any version from 18.16 on (see ``_compat``)."""

    max_threads = 8

    def _make_client(self, database: str | None) -> Any:
        from engine.archive._compat import http_client

        return http_client(
            self.dsn.url, self.dsn.username, self.dsn.password, database,
            connect_timeout=5, send_receive_timeout=30,
        )


def _abs(path: str) -> str:
    import os

    return os.path.abspath(path)
