"""Process wiring of the archive: open a store, run an archiver, the ``danmaku archiver`` body.

``engine/runner.py`` uses these for ``danmaku up`` (embedded engine under the data dir) and for
the gateway and worker processes (``DANMAKU_ARCHIVE_DSN``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from engine.archive.archiver import Archiver
from engine.archive.metrics import ArchiverMetrics, RegistryCollector
from engine.archive.store import ArchiveReader, ArchiveStore, open_store
from engine.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from engine.config import Settings
    from engine.gateway.app import Gateway
    from engine.redis import ShardSet

log = logging.getLogger("danmaku.archive")

OFF = frozenset({"off", "none", "false", "0"})


def configured_dsn(settings: Settings) -> str:
    """The archive DSN of a distributed process ('' = no archive)."""
    dsn = settings.archive.dsn.strip()
    return "" if dsn.lower() in OFF else dsn


def embedded_dsn(settings: Settings) -> str:
    """``danmaku up``'s archive: the configured DSN, else the embedded engine in the data dir."""
    dsn = settings.archive.dsn.strip()
    if dsn.lower() in OFF:
        return ""
    return dsn or "chdb://" + os.path.abspath(os.path.join(settings.data_dir, "archive"))


async def prepare(store: ArchiveStore, *, wait: bool, max_delay_s: float = 10.0) -> bool:
    """Create/migrate the schema. With ``wait``, retry until it works; else try once."""
    delay = 0.2
    while True:
        try:
            version = await store.ensure_schema()
            log.info("archive %s ready (schema version %d)", store.description, version)
            return True
        except Exception as exc:
            if not wait:
                log.warning("archive %s not ready: %s", store.description, exc)
                return False
            log.warning("archive %s not ready (%s); retrying in %.1f s",
                        store.description, exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


@asynccontextmanager
async def open_archive(dsn: str, *, wait: bool = False) -> AsyncIterator[ArchiveStore]:
    store = open_store(dsn)
    try:
        await prepare(store, wait=wait)
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


@asynccontextmanager
async def maybe_archive(
    dsn: str, *, drop_if_unready: bool = False
) -> AsyncIterator[ArchiveStore | None]:
    """The store of ``dsn`` ('' = None). A store whose schema cannot be prepared now is kept
    (reads heal when the server comes back), unless ``drop_if_unready`` (the embedded engine:
    chdb missing, or its data dir held by another process): then None."""
    if not dsn:
        yield None
        return
    store = open_store(dsn)
    try:
        ready = await prepare(store, wait=False)
        if not ready and drop_if_unready:
            log.warning("running without an archive")
            yield None
        else:
            yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


def floor_source(
    store: ArchiveReader, *, patience_s: float = 10.0
) -> Callable[[str], Awaitable[int]]:
    """``RoomWorker.floor_source``: the archive's highest seq of a room. Retried for up to
    ``patience_s`` (a guess could reuse seqs), then the error is raised."""

    async def floor(room: str) -> int:
        delay = 0.1
        deadline = trio.current_time() + patience_s
        while True:
            try:
                return await store.max_seq(room)
            except Exception as exc:
                if trio.current_time() + delay > deadline:
                    raise
                log.warning("archive max seq of %s failed (%s); retrying", room, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)

    return floor


async def run_viewer_samples(gw: Gateway, store: ArchiveStore, every_ms: int) -> None:
    """The gateway's periodic viewers-online samples (started next to the gateway)."""
    from engine.archive.viewers import sample_viewers_loop

    await sample_viewers_loop(store, gw.node_id, gw.local_counts, every_s=every_ms / 1000)


def include_metrics(registry: CollectorRegistry, metrics: ArchiverMetrics) -> None:
    """Embedded mode: the gateway's /metrics also shows the archiver's."""
    registry.register(RegistryCollector(metrics.registry))


@asynccontextmanager
async def open_archiver(
    settings: Settings, shards: ShardSet, store: ArchiveStore, *,
    metrics: ArchiverMetrics | None = None,
) -> AsyncIterator[Archiver]:
    archiver = Archiver(shards, store, settings.archive, metrics=metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(archiver.run)
        try:
            yield archiver
        finally:
            nursery.cancel_scope.cancel()


def serve_metrics(metrics: ArchiverMetrics, host: str, port: int) -> str:
    """Serve ``/metrics`` from a daemon thread (prometheus_client's server); returns its URL."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    bound = server.server_address[1]
    return f"http://{host}:{bound}/metrics"


async def run_archiver_process(settings: Settings) -> None:
    """``danmaku archiver``: archive streams of every shard -> the DSN's ClickHouse."""
    from engine.runner import make_shards, until_signal

    dsn = configured_dsn(settings)
    if not dsn:
        raise ConfigError("no archive configured: set DANMAKU_ARCHIVE_DSN (or --dsn)")
    metrics = ArchiverMetrics()
    a = settings.archive
    where = serve_metrics(metrics, a.metrics_host, a.metrics_port) if a.metrics_port else "off"
    async with make_shards(settings) as shards, open_archive(dsn, wait=True) as store, \
            open_archiver(settings, shards, store, metrics=metrics) as archiver:
        print(f"danmaku archiver {archiver.node_id}: {', '.join(settings.redis.urls)} -> "
              f"{store.description} (metrics {where})", flush=True)
        await until_signal()
