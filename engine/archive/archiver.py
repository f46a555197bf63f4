"""The archiver: archive streams (Redis) -> batched inserts (ClickHouse).

Theory of operation
-------------------
The sequencing Lua step XADDs every sequenced message to its shard's archive stream
(``danmaku:arch``; under Redis Cluster one stream per room, ``{r:<room>}:arch``). Archivers read
those streams with the consumer group ``archiver``. Each stream has one consumer task per
archiver, which collects entries into a batch until it holds ``batch_rows`` rows or its oldest
entry has waited ``batch_ms``, then:

1. inserts the batch into the archive in a worker thread, retrying with exponential backoff
   (``retry_min_ms`` doubling to ``retry_max_ms``) for as long as the insert fails: while the
   archive is down, reading stops, so the backlog stays in Redis (nothing is dropped, memory
   stays bounded to one batch per stream);
2. only after the insert succeeded, XACKs and XDELs the batch's entries (one pipeline).

Guarantees:
- every entry is inserted at least once: an entry leaves the stream only after its insert;
- duplicates never show: a crash between 1 and 2 leaves the entries pending, a restarted
  archiver (same node id: it re-reads its own pending entries first) or another one (XAUTOCLAIM
  after ``claim_idle_ms``) inserts them again, and the table (``ReplacingMergeTree`` on
  ``(room, seq)``) plus the deduplicating reads make the second copy invisible;
- lag is measured from Redis itself (stream length, pending count, oldest entry's id time), so
  the metrics stay true while the archive is down.

Under Redis Cluster the per-room streams are found by SCANning every master for ``*:arch``
streams every ``discover_every_s``.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from engine import keys
from engine.archive.metrics import ArchiverMetrics
from engine.archive.rows import rows_from_entries
from engine.archive.store import ArchiveStore, MessageRows
from engine.config import ArchiveSettings
from engine.redis import RedisCommands, RedisError, RedisReplyError, ShardSet

log = logging.getLogger("danmaku.archiver")

GROUP = "archiver"
SHARD_STREAM = "danmaku:arch"


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
    rows: int  # rows inserted since start
    batches: int
    insert_errors: int
    streams: int


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
    ) -> None:
        self._shards = shards
        self._store = store
        self.settings = settings
        self.metrics = metrics or ArchiverMetrics()
        self.node_id = settings.node_id or f"archiver-{os.getpid()}-{secrets.token_hex(3)}"
        self._block_ms = block_ms if block_ms is not None else max(50, settings.batch_ms)
        self._discover_every_s = discover_every_s
        self._lag_every_s = lag_every_s
        self._streams: dict[tuple[int, str], RedisCommands] = {}
        self._rows = 0
        self._batches = 0
        self._errors = 0
        # Test hook: awaited after a successful insert, before the XACK (crash injection).
        self.after_insert: Callable[[list[Any]], Awaitable[None]] | None = None

    def statistics(self) -> ArchiverStatistics:
        return ArchiverStatistics(self._rows, self._batches, self._errors, len(self._streams))

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self._shards.cluster:
                await self._discover(nursery)
                nursery.start_soon(self._discover_loop, nursery)
            else:
                for i, client in enumerate(self._shards.shards):
                    await self._start_stream(nursery, i, client, SHARD_STREAM)
            nursery.start_soon(self._lag_loop)
            task_status.started()

    async def _start_stream(
        self, nursery: trio.Nursery, index: int, client: RedisCommands, stream: str
    ) -> None:
        key = (index, stream)
        if key in self._streams:
            return
        await _ensure_group(client, stream)
        self._streams[key] = client
        self.metrics.streams.set(len(self._streams))
        nursery.start_soon(self._consume, client, stream)

    async def _discover_loop(self, nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(self._discover_every_s)
            try:
                await self._discover(nursery)
            except RedisError as exc:
                log.warning("archive stream discovery failed: %s", exc)

    async def _discover(self, nursery: trio.Nursery) -> None:
        """Cluster mode: find every room's archive stream on every master."""
        cluster = self._shards.cluster_client
        assert cluster is not None
        if not cluster.nodes:
            await cluster.initialize()
        for node in cluster.nodes:
            cursor = b"0"
            while True:
                cursor, found = await node.execute(
                    "SCAN", cursor, "MATCH", "*:arch", "COUNT", 1000, "TYPE", "stream"
                )
                for name in found:
                    stream = name.decode() if isinstance(name, bytes) else str(name)
                    await self._start_stream(nursery, 0, cluster, stream)
                if cursor in (b"0", "0", 0):
                    break

    # ---- one stream --------------------------------------------------------------------------
    async def _consume(self, client: RedisCommands, stream: str) -> None:
        """Read and parse batch N+1 while batch N is being inserted (a hand-off channel: at
        most two batches in memory; while inserts fail, reading stops)."""
        send, receive = trio.open_memory_channel[tuple[list[Any], MessageRows]](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flusher, client, stream, receive)
            await self._reader(client, stream, send)

    async def _flusher(
        self, client: RedisCommands, stream: str,
        receive: trio.MemoryReceiveChannel[tuple[list[Any], MessageRows]],
    ) -> None:
        async for entries, rows in receive:
            await self._insert_and_ack(client, stream, entries, rows)

    async def _reader(
        self, client: RedisCommands, stream: str,
        send: trio.MemorySendChannel[tuple[list[Any], MessageRows]],
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
                await send.send((batch.entries, self._rows_of(stream, batch.entries)))
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

    def _rows_of(self, stream: str, entries: list[Any]) -> MessageRows:
        rows, bad = rows_from_entries(entries)
        if bad:
            log.warning("%s: skipping %d malformed archive entries", stream, bad)
            self.metrics.malformed.inc(bad)
        return rows

    async def flush(self, client: RedisCommands, stream: str, entries: list[Any]) -> None:
        """Insert ``entries`` (retrying until it works), then XACK + XDEL them."""
        if entries:
            await self._insert_and_ack(client, stream, entries, self._rows_of(stream, entries))

    async def _insert_and_ack(
        self, client: RedisCommands, stream: str, entries: list[Any], rows: MessageRows
    ) -> None:
        s = self.settings
        delay = s.retry_min_ms / 1000
        while True:
            started = time.perf_counter()
            try:
                await self._store.insert(rows)
                break
            except Exception as exc:  # any archive failure: keep the batch, retry later
                self._errors += 1
                self.metrics.insert_errors.inc()
                log.warning(
                    "archive insert of %d rows failed (%s); retrying in %.1f s",
                    len(rows), exc, delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, s.retry_max_ms / 1000)
        self.metrics.insert_seconds.observe(time.perf_counter() - started)
        self.metrics.rows.inc(len(rows))
        self.metrics.batches.inc()
        self.metrics.last_success.set(time.time())
        self._rows += len(rows)
        self._batches += 1
        if self.after_insert is not None:
            await self.after_insert(entries)
        ids = [e[0] for e in entries]
        delay = s.retry_min_ms / 1000
        while True:
            try:
                await client.pipeline(
                    [["XACK", stream, GROUP, *ids], ["XDEL", stream, *ids]]
                )
                return
            except RedisError as exc:
                # Still pending: a restart would re-insert them, which is harmless.
                log.warning("XACK on %s failed (%s); retrying in %.1f s", stream, exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, s.retry_max_ms / 1000)

    # ---- lag ---------------------------------------------------------------------------------
    async def lag(self) -> tuple[int, int, float]:
        """(backlog, pending, oldest age in s) summed / maxed over the streams."""
        backlog = pending = 0
        oldest = 0.0
        now_ms = time.time() * 1000
        for (_i, stream), client in list(self._streams.items()):
            length, summary, first = await client.pipeline(
                [
                    ["XLEN", stream],
                    ["XPENDING", stream, GROUP],
                    ["XRANGE", stream, "-", "+", "COUNT", 1],
                ]
            )
            if isinstance(length, int):
                backlog += length
            if isinstance(summary, list) and summary and isinstance(summary[0], int):
                pending += summary[0]
            if isinstance(first, list) and first:
                oldest = max(oldest, (now_ms - _id_ms(first[0][0])) / 1000)
        return backlog, pending, max(0.0, oldest)

    async def _lag_loop(self) -> None:
        while True:
            try:
                backlog, pending, oldest = await self.lag()
                self.metrics.backlog.set(backlog)
                self.metrics.pending.set(pending)
                self.metrics.oldest_age.set(oldest)
            except RedisError as exc:
                log.debug("lag sampling failed: %s", exc)
            await trio.sleep(self._lag_every_s)


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
