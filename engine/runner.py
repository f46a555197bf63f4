"""Process bodies: the gateway, the worker, and the all-in-one embedded engine."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from engine import protocol as p
from engine import tls
from engine.config import Settings, new_node_id, resolve_keyring, resolve_secret
from engine.gateway.app import Gateway
from engine.gateway.http_server import serve_listeners
from engine.redis import ShardSet
from rooms.worker import RoomWorker

if TYPE_CHECKING:
    from engine.archive.store import ArchiveStore

log = logging.getLogger("danmaku")


def make_shards(settings: Settings) -> ShardSet:
    return ShardSet(list(settings.redis.urls), cluster=settings.redis.cluster)


@asynccontextmanager
async def open_gateway(
    settings: Settings, shards: ShardSet, *, secret: str, archive: ArchiveStore | None = None
) -> AsyncIterator[tuple[Gateway, list[trio.SocketListener]]]:
    """A running gateway with its listener bound (port 0 picks a free port)."""
    gs = settings.gateway
    listeners = await trio.open_tcp_listeners(gs.port, host=gs.host, backlog=4096)
    port = listeners[0].socket.getsockname()[1]
    gs = replace(gs, port=port, node_id=gs.node_id or new_node_id("gw"))
    keyring = resolve_keyring(replace(settings, secret=secret)) if settings.secrets else secret
    gw = Gateway(gs, settings.redis, shards, secret=keyring, node_id=gs.node_id)
    gw.archive = archive
    serving: list[Any] = list(listeners)
    if gs.tls_cert_file or gs.tls_key_file:  # https:// and wss:// (engine/tls.py)
        serving = tls.wrap_listeners(
            listeners, tls.server_context(gs.tls_cert_file, gs.tls_key_file or gs.tls_cert_file)
        )
    accepting, refusing = trio.CancelScope(), trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.run)
        await nursery.start(
            partial(serve_listeners, gw, serving, accepting=accepting, closed=refusing)
        )
        if archive is not None:  # viewers-online samples for the dashboards (issue 3)
            from engine.archive.service import run_viewer_samples

            nursery.start_soon(
                run_viewer_samples, gw, archive, settings.archive.viewers_sample_ms
            )
        try:
            yield gw, listeners
        finally:
            # Refuse new connections first: viewers told to go away (1001) must not reconnect
            # to this process during the grace period, only to be dropped again.
            accepting.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await refusing.wait()
                await shutdown_sessions(gw)
            nursery.cancel_scope.cancel()


async def shutdown_sessions(gw: Gateway, *, grace_s: float = 2.0) -> None:
    """Close every WebSocket with 1001 so clients reconnect with backoff and resume."""
    for session in list(gw.sessions.values()):
        session.conn.start_close(p.CLOSE_GOING_AWAY, "server going away")
    with trio.move_on_after(grace_s):
        for session in list(gw.sessions.values()):
            await session.done.wait()


@asynccontextmanager
async def open_worker(
    settings: Settings, shards: ShardSet, *, archive: ArchiveStore | None = None
) -> AsyncIterator[RoomWorker]:
    ws = replace(settings.worker, node_id=settings.worker.node_id or new_node_id("wk"))
    worker = RoomWorker(
        shards, settings.redis, ws, max_text_chars=settings.gateway.max_text_chars
    )
    if archive is not None:  # a lost counter restarts above the archive's highest seq
        from engine.archive.service import floor_source

        worker.floor_source = floor_source(archive)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        try:
            yield worker
        finally:
            nursery.cancel_scope.cancel()


async def until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            return


async def run_gateway_process(settings: Settings) -> None:
    from engine.archive.service import configured_dsn, maybe_archive

    secret = resolve_secret(settings)
    async with maybe_archive(configured_dsn(settings)) as archive, make_shards(
        settings
    ) as shards, open_gateway(settings, shards, secret=secret, archive=archive) as (
        gw,
        _listeners,
    ):
        print(f"danmaku gateway {gw.node_id} on http://{gw.settings.host}:{gw.settings.port}/"
              f" (WebSocket {gw.public_ws_url()})", flush=True)
        await until_signal()


async def run_worker_process(settings: Settings) -> None:
    from engine.archive.service import configured_dsn, maybe_archive

    async with maybe_archive(configured_dsn(settings)) as archive, make_shards(
        settings
    ) as shards, open_worker(settings, shards, archive=archive) as worker:
        print(f"danmaku worker {worker.node_id} on {', '.join(settings.redis.urls)}", flush=True)
        await until_signal()


@asynccontextmanager
async def _redis_url_file(path: Any, url: str) -> AsyncIterator[None]:
    """Where `danmaku user ...` finds the embedded engine's private Redis while it runs."""
    path.write_text(url + "\n")
    path.chmod(0o600)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield None


async def run_embedded(settings: Settings) -> None:
    """``danmaku up``: a private redis-server child, a gateway and a worker in one process."""
    from pathlib import Path

    from engine.embedded_redis import RedisProcess

    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = resolve_secret(settings)
    redis = RedisProcess(data_dir / "redis", appendonly=True)
    async with redis.running():
        redis_settings = replace(settings.redis, urls=(redis.url,), cluster=False)
        settings = replace(settings, redis=redis_settings)
        from engine.archive import service as archive_service

        async with archive_service.maybe_archive(
            archive_service.embedded_dsn(settings), drop_if_unready=True
        ) as archive, make_shards(settings) as shards, open_worker(
            settings, shards, archive=archive
        ), open_gateway(
            settings, shards, secret=secret, archive=archive
        ) as (gw, _listeners), _redis_url_file(data_dir / "redis.url", redis.url), (
            archive_service.open_archiver(settings, shards, archive)
            if archive is not None else _nothing()
        ) as archiver:
            if archiver is not None:
                archive_service.include_metrics(gw.metrics.registry, archiver.metrics)
            base = f"http://{gw.settings.host}:{gw.settings.port}"
            print(
                f"danmaku up: data in {data_dir.resolve()}\n"
                f"  Web page   {base}/  (player: {base}/r/lobby)\n"
                f"  WebSocket  {gw.public_ws_url()}\n"
                f"  HTTP API   {base}/v1/dispatch  {base}/healthz  {base}/metrics\n"
                f"  Redis      {redis.url} (private child)\n"
                f"  Archive    {archive.description if archive else 'off'}"
                f"{f'  {base}/dashboards' if archive else ''}\n"
                f"Try: danmaku token --user alice --data-dir {settings.data_dir}",
                flush=True,
            )
            await until_signal()
