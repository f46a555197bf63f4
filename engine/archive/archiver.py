"""The archiver: Redis streams -> batched inserts (ClickHouse).

Theory of operation
-------------------
Three kinds of stream are archived, each into its table (a ``Sink``, see ``sinks``): the
archive stream of sequenced messages (written by the sequencing Lua step) into ``messages``, the
stream of messages refused by moderation (written by the worker) into ``moderation``, and the
audit log of moderator and admin actions into ``audit``. With a list of shards each shard has
one stream of each kind (``danmaku:arch``, ``danmaku:modout``, ``danmaku:audit``); under Redis
Cluster one per room and kind (``{r:<room>}:arch``, ...). Archivers read them with the consumer
group ``archiver``. Each stream has one consumer task per archiver, which collects entries into a
batch until it holds ``batch_rows`` rows or its oldest entry has waited ``batch_ms``, then:

1. parses the batch with its sink (malformed entries are counted and skipped) and inserts it
   into the sink's table in a worker thread, retrying with exponential backoff
   (``retry_min_ms`` doubling to ``retry_max_ms``) for as long as the insert fails: while the
   archive is down, reading stops, so the backlog stays in Redis (nothing is dropped by the
   archiver, memory stays bounded to two batches per stream);
2. only after the insert succeeded, XACKs the batch's entries and, except for the audit log,
   XDELs them (one pipeline). The audit stream keeps its entries (the admin API reads the newest
   back; the stream is capped by the writers' ``MAXLEN``).

Guarantees (the same for every sink):
- every entry is inserted at least once: an entry is acknowledged (and leaves the stream) only
  after its insert;
- duplicates never show: a crash between 1 and 2 leaves the entries pending, a restarted
  archiver (same node id: it re-reads its own pending entries first) or another one (XAUTOCLAIM
  after ``claim_idle_ms``) inserts them again, and the tables (``ReplacingMergeTree`` keyed by
  ``(room, seq)``, or by the whole outcome / audit entry) plus the deduplicating reads make the
  second copy invisible;
- lag is measured from Redis itself, so the metrics stay true while the archive is down: for the
  streams whose entries are deleted, their length, pending count and first entry; for the audit
  log, the pending entries and those after the group's last delivered id (counted up to
  ``LAG_COUNT_MAX`` per stream). Totals and per-table figures go to ``/metrics``.

What the archiver cannot prevent: the writers cap the outcome and audit streams (``MAXLEN ~``
100,000), so an archiver down for longer than it takes to write that many refusals or actions
loses the oldest of them (the archive streams of messages are not capped).

Under Redis Cluster the per-room streams are found by SCANning every master for streams whose
name ends with a sink's suffix (``:arch``, ``:modout``, ``:audit``) every ``discover_every_s``.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from engine import keys
from engine.archive.metrics import ArchiverMetrics
from engine.archive.sinks import MESSAGES, SINKS, Sink
from engine.archive.store import ArchiveStore
from engine.config import ArchiveSettings
from engine.redis import RedisCommands, RedisError, RedisReplyError, ShardSet

log = logging.getLogger("danmaku.archiver")

GROUP = "archiver"
SHARD_STREAM = keys.ARCHIVE_STREAM
LAG_COUNT_MAX = 1000  # a retained stream's un-archived entries are counted up to this many

R = TypeVar("R", bound=Sized)


@dataclass
class _Batch:
    entries: list[Any] = field(default_factory=list)
    started: float = 0.0  # trio time of the first entry

    def add(self, entries: Sequence[Any]) -> None:
        if not self.entries:
            self.started = trio.current_time()
        self.entries.extend(e for e in entries if e is not None)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True, slots=True)
class ArchiverStatistics:
    rows: int  # rows inserted since start (every table)
    batches: int
    insert_errors: int
    streams: int
    table_rows: dict[str, int] = field(default_factory=dict)  # rows inserted, by table


@dataclass(frozen=True, slots=True)
class Lag:
    """Of one table (or all): entries not yet archived, of them read but not acknowledged, and
    how long the oldest has waited (s)."""

    backlog: int = 0
    pending: int = 0
    oldest_s: float = 0.0

    def __add__(self, other: Lag) -> Lag:
        return Lag(self.backlog + other.backlog, self.pending + other.pending,
                   max(self.oldest_s, other.oldest_s))


def _id_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


class Archiver:
    def __init__(
        self,
        shards: ShardSet,
        store: ArchiveStore,
        settings: ArchiveSettings,
        *,
        metrics: ArchiverMetrics | None = None,
        block_ms: int | None = None,
        discover_every_s: float = 2.0,
        lag_every_s: float = 1.0,
        sinks: Sequence[Sink[Any]] = SINKS,
    ) -> None:
        self._shards = shards
        self._store = store
        self.settings = settings
        self.metrics = metrics or ArchiverMetrics()
        self.node_id = settings.node_id or f"archiver-{os.getpid()}-{secrets.token_hex(3)}"
        self._block_ms = block_ms if block_ms is not None else max(50, settings.batch_ms)
        self._discover_every_s = discover_every_s
        self._lag_every_s = lag_every_s
        self._sinks = tuple(sinks)
        self._streams: dict[tuple[int, str], tuple[RedisCommands, Sink[Any]]] = {}
        self._rows = 0
        self._table_rows = {sink.name: 0 for sink in self._sinks}
        self._batches = 0
        self._errors = 0
        # Test hook: awaited with the table and the entries after a successful insert, before
        # the XACK (crash injection).
        self.after_insert: Callable[[str, list[Any]], Awaitable[None]] | None = None

    def statistics(self) -> ArchiverStatistics:
        return ArchiverStatistics(self._rows, self._batches, self._errors, len(self._streams),
                                  dict(self._table_rows))

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self._shards.cluster:
                await self._discover(nursery)
                nursery.start_soon(self._discover_loop, nursery)
            else:
                for i, client in enumerate(self._shards.shards):
                    for sink in self._sinks:
                        await self._start_stream(nursery, i, client, sink.stream, sink)
            nursery.start_soon(self._lag_loop)
            task_status.started()

    async def _start_stream(
        self, nursery: trio.Nursery, index: int, client: RedisCommands, stream: str,
        sink: Sink[Any],
    ) -> None:
        key = (index, stream)
        if key in self._streams:
            return
        await _ensure_group(client, stream)
        self._streams[key] = (client, sink)
        self.metrics.streams.set(len(self._streams))
        nursery.start_soon(self._consume, client, stream, sink)

    async def _discover_loop(self, nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(self._discover_every_s)
            try:
                await self._discover(nursery)
            except RedisError as exc:
                log.warning("archive stream discovery failed: %s", exc)

    async def _discover(self, nursery: trio.Nursery) -> None:
        """Cluster mode: find every room's streams of every sink on every master (one SCAN of
        the streams per master; the names tell the sink)."""
        cluster = self._shards.cluster_client
        assert cluster is not None
        if not cluster.nodes:
            await cluster.initialize()
        for node in cluster.nodes:
            cursor = b"0"
            while True:
                cursor, found = await node.execute(
                    "SCAN", cursor, "COUNT", 1000, "TYPE", "stream"
                )
                for name in found:
                    stream = name.decode() if isinstance(name, bytes) else str(name)
                    sink = self._sink_of(stream)
                    if sink is not None:
                        await self._start_stream(nursery, 0, cluster, stream, sink)
                if cursor in (b"0", "0", 0):
                    break

    def _sink_of(self, stream: str) -> Sink[Any] | None:
        for sink in self._sinks:
            if stream.endswith(sink.suffix):
                return sink
        return None

    # ---- one stream --------------------------------------------------------------------------
    async def _consume(self, client: RedisCommands, stream: str, sink: Sink[R]) -> None:
        """Read and parse batch N+1 while batch N is being inserted (a hand-off channel: at
        most two batches in memory; while inserts fail, reading stops)."""
        send, receive = trio.open_memory_channel[tuple[list[Any], R]](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flusher, client, stream, sink, receive)
            await self._reader(client, stream, sink, send)

    async def _flusher(
        self, client: RedisCommands, stream: str, sink: Sink[R],
        receive: trio.MemoryReceiveChannel[tuple[list[Any], R]],
    ) -> None:
        async for entries, rows in receive:
            await self._insert_and_ack(client, stream, sink, entries, rows)

    async def _reader(
        self, client: RedisCommands, stream: str, sink: Sink[R],
        send: trio.MemorySendChannel[tuple[list[Any], R]],
    ) -> None:
        s = self.settings
        batch = _Batch()
        # First our own pending entries (a restart with the same node id), then new ones.
        cursor = "0"
        last_claim = trio.current_time()
        while True:
            want = max(1, s.batch_rows - len(batch))
            if batch:
                wait_ms = int((batch.started + s.batch_ms / 1000 - trio.current_time()) * 1000)
                block = max(1, min(self._block_ms, wait_ms))
            else:
                block = self._block_ms
            try:
                if cursor == ">" and self._shards.cluster:
                    # Many per-room streams: blocking reads would each hold a connection.
                    reply = await client.execute(
                        "XREADGROUP", "GROUP", GROUP, self.node_id, "COUNT", want,
                        "STREAMS", stream, ">",
                    )
                    if not reply:
                        await trio.sleep(block / 1000)
                elif cursor == ">":
                    reply = await client.execute(
                        "XREADGROUP", "GROUP", GROUP, self.node_id, "COUNT", want,
                        "BLOCK", block, "STREAMS", stream, ">",
                    )
                else:
                    reply = await client.execute(
                        "XREADGROUP", "GROUP", GROUP, self.node_id, "COUNT", want,
                        "STREAMS", stream, cursor,
                    )
            except RedisReplyError as exc:
                if exc.kind == "NOGROUP":  # the stream (and group) was deleted: re-create
                    await _ensure_group(client, stream)
                    continue
                raise
            except RedisError as exc:
                log.warning("reading %s failed (%s); retrying", stream, exc)
                await trio.sleep(1.0)
                continue
            entries = reply[0][1] if reply else []
            if cursor != ">":  # pending entries: page through them, then switch to new ones
                cursor = _as_str(entries[-1][0]) if entries else ">"
            batch.add(entries)
            now = trio.current_time()
            if now - last_claim >= s.claim_idle_ms / 2000:
                last_claim = now
                batch.add(await self._claim(client, stream))
            if batch and (
                len(batch) >= s.batch_rows or now - batch.started >= s.batch_ms / 1000
            ):
                await send.send((batch.entries, self._parse(stream, sink, batch.entries)))
                batch = _Batch()

    async def _claim(self, client: RedisCommands, stream: str) -> list[Any]:
        """Entries another (dead) archiver read but never acknowledged."""
        try:
            reply = await client.execute(
                "XAUTOCLAIM", stream, GROUP, self.node_id, self.settings.claim_idle_ms, "0-0",
                "COUNT", self.settings.batch_rows,
            )
        except RedisError as exc:
            log.warning("XAUTOCLAIM on %s failed: %s", stream, exc)
            return []
        claimed = [e for e in reply[1] if e is not None and e[1] is not None]
        if claimed:
            log.info("took over %d pending entries of %s", len(claimed), stream)
        # Entries deleted while pending come back as ids without fields: acknowledge them.
        gone = [e[0] for e in reply[1] if e is not None and e[1] is None]
        if len(reply) > 2:
            gone += list(reply[2])
        if gone:
            await client.execute("XACK", stream, GROUP, *gone)
        return claimed

    def _parse(self, stream: str, sink: Sink[R], entries: list[Any]) -> R:
        rows, bad = sink.parse(entries)
        if bad:
            log.warning("%s: skipping %d malformed %s entries", stream, bad, sink.name)
            self.metrics.malformed.inc(bad)
        return rows

    async def flush(
        self, client: RedisCommands, stream: str, entries: list[Any],
        sink: Sink[Any] = MESSAGES,
    ) -> None:
        """Insert ``entries`` of ``stream`` (retrying until it works), then acknowledge them."""
        if entries:
            await self._insert_and_ack(
                client, stream, sink, entries, self._parse(stream, sink, entries)
            )

    async def _insert_and_ack(
        self, client: RedisCommands, stream: str, sink: Sink[R], entries: list[Any], rows: R
    ) -> None:
        s = self.settings
        delay = s.retry_min_ms / 1000
        while True:
            started = time.perf_counter()
            try:
                await sink.insert(self._store, rows)
                break
            except Exception as exc:  # any archive failure: keep the batch, retry later
                self._errors += 1
                self.metrics.insert_errors.inc()
                log.warning(
                    "archive insert of %d %s rows failed (%s); retrying in %.1f s",
                    len(rows), sink.name, exc, delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, s.retry_max_ms / 1000)
        self.metrics.insert_seconds.observe(time.perf_counter() - started)
        self.metrics.rows.inc(len(rows))
        self.metrics.table_rows.labels(sink.name).inc(len(rows))
        self.metrics.batches.inc()
        self.metrics.last_success.set(time.time())
        self._rows += len(rows)
        self._table_rows[sink.name] = self._table_rows.get(sink.name, 0) + len(rows)
        self._batches += 1
        if self.after_insert is not None:
            await self.after_insert(sink.name, entries)
        ids = [e[0] for e in entries]
        commands: list[list[Any]] = [["XACK", stream, GROUP, *ids]]
        if sink.delete:
            commands.append(["XDEL", stream, *ids])
        delay = s.retry_min_ms / 1000
        while True:
            try:
                await client.pipeline(commands)
                return
            except RedisError as exc:
                # Still pending: a restart would re-insert them, which is harmless.
                log.warning("XACK on %s failed (%s); retrying in %.1f s", stream, exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, s.retry_max_ms / 1000)

    # ---- lag ---------------------------------------------------------------------------------
    async def lag(self) -> tuple[int, int, float]:
        """(backlog, pending, oldest age in s) summed / maxed over every stream."""
        total = sum((lag for lag in (await self.lag_by_table()).values()), Lag())
        return total.backlog, total.pending, total.oldest_s

    async def lag_by_table(self) -> dict[str, Lag]:
        """The lag of each sink's streams (summed; the age is the oldest's)."""
        out = {sink.name: Lag() for sink in self._sinks}
        now_ms = time.time() * 1000
        for (_i, stream), (client, sink) in list(self._streams.items()):
            if sink.delete:
                backlog, pending, oldest_id = await _deleted_lag(client, stream)
            else:
                backlog, pending, oldest_id = await _retained_lag(client, stream)
            oldest = (now_ms - _id_ms(oldest_id)) / 1000 if oldest_id is not None else 0.0
            out[sink.name] = out.get(sink.name, Lag()) + Lag(backlog, pending, max(0.0, oldest))
        return out

    async def _lag_loop(self) -> None:
        m = self.metrics
        while True:
            try:
                by_table = await self.lag_by_table()
                total = sum(by_table.values(), Lag())
                m.backlog.set(total.backlog)
                m.pending.set(total.pending)
                m.oldest_age.set(total.oldest_s)
                for name, lag in by_table.items():
                    m.table_backlog.labels(name).set(lag.backlog)
                    m.table_pending.labels(name).set(lag.pending)
                    m.table_oldest_age.labels(name).set(lag.oldest_s)
            except RedisError as exc:
                log.debug("lag sampling failed: %s", exc)
            await trio.sleep(self._lag_every_s)


async def _deleted_lag(client: RedisCommands, stream: str) -> tuple[int, int, Any]:
    """A stream whose archived entries are deleted: everything in it waits."""
    length, summary, first = await client.pipeline(
        [["XLEN", stream], ["XPENDING", stream, GROUP], ["XRANGE", stream, "-", "+", "COUNT", 1]]
    )
    backlog = length if isinstance(length, int) else 0
    pending = summary[0] if isinstance(summary, list) and summary and isinstance(
        summary[0], int) else 0
    oldest = first[0][0] if isinstance(first, list) and first else None
    return backlog, pending, oldest


async def _retained_lag(client: RedisCommands, stream: str) -> tuple[int, int, Any]:
    """A stream that keeps its archived entries (the audit log): what waits is the pending
    entries and those after the group's last delivered id (counted up to LAG_COUNT_MAX)."""
    summary, groups = await client.pipeline(
        [["XPENDING", stream, GROUP], ["XINFO", "GROUPS", stream]]
    )
    pending = 0
    oldest: Any = None
    if isinstance(summary, list) and summary and isinstance(summary[0], int) and summary[0]:
        pending, oldest = summary[0], summary[1]
    last = None
    for group in groups if isinstance(groups, list) else []:
        info = {_as_str(group[i]): group[i + 1] for i in range(0, len(group) - 1, 2)}
        if _as_str(info.get("name", b"")) == GROUP:
            last = _as_str(info.get("last-delivered-id", b"0-0"))
    if last is None:
        return pending, pending, oldest
    waiting = await client.execute("XRANGE", stream, "(" + last, "+", "COUNT", LAG_COUNT_MAX)
    if waiting and (oldest is None or _id_ms(waiting[0][0]) < _id_ms(oldest)):
        oldest = waiting[0][0]
    return pending + len(waiting or ()), pending, oldest


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _ensure_group(client: RedisCommands, stream: str) -> None:
    try:
        await client.execute("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
    except RedisReplyError as exc:
        if exc.kind != "BUSYGROUP":
            raise


def archive_stream_for(room: str, *, cluster: bool) -> str:
    """The archive stream a room's messages go to (as the Lua step writes them)."""
    return keys.archive_stream(room, cluster=cluster)
