"""Test support: a real engine (gateways + workers) in the test's own trio run.

Every part is real: redis-server processes (from the session fixtures), the gateway's TCP
listener on 127.0.0.1, the worker's consumer group. Only the process boundary is collapsed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from engine.config import GatewaySettings, RedisSettings, Settings, WorkerSettings
from engine.gateway.app import Gateway
from engine.runner import make_shards, open_gateway, open_worker
from engine.tokens import mint_token
from rooms.worker import RoomWorker

SECRET = "test-secret-not-for-production"


@dataclass
class Stack:
    settings: Settings
    gateways: list[Gateway] = field(default_factory=list)
    workers: list[RoomWorker] = field(default_factory=list)
    stack: AsyncExitStack | None = None

    @property
    def secret(self) -> str:
        return SECRET

    def ws_url(self, i: int = 0) -> str:
        return self.gateways[i].public_ws_url()

    def http_url(self, i: int = 0) -> str:
        gs = self.gateways[i].settings
        return f"http://{gs.host}:{gs.port}"

    def token(self, user: str, **kw: Any) -> str:
        return mint_token(SECRET, user=user, **kw)


def stack_settings(
    urls: Sequence[str], *, gateway: dict[str, Any] | None = None,
    worker: dict[str, Any] | None = None, redis: dict[str, Any] | None = None,
) -> Settings:
    return Settings(
        redis=replace(RedisSettings(urls=tuple(urls)), **(redis or {})),
        # Tests pump frames faster than any person: the flood limit is tested on its own.
        gateway=replace(
            GatewaySettings(host="127.0.0.1", port=0, frames_per_s=100_000, frames_burst=100_000),
            **(gateway or {}),
        ),
        worker=replace(WorkerSettings(block_ms=200, claim_every_ms=200, claim_idle_ms=500),
                       **(worker or {})),
        secret=SECRET,
    )


@asynccontextmanager
async def running_stack(
    urls: Sequence[str], *, gateways: int = 1, workers: int = 1, **settings_kw: Any
) -> AsyncIterator[Stack]:
    settings = stack_settings(urls, **settings_kw)
    async with AsyncExitStack() as stack:
        result = Stack(settings, stack=stack)
        for _ in range(workers):
            shards = await stack.enter_async_context(make_shards(settings))
            result.workers.append(await stack.enter_async_context(open_worker(settings, shards)))
        for _ in range(gateways):
            shards = await stack.enter_async_context(make_shards(settings))
            gw, _listeners = await stack.enter_async_context(
                open_gateway(settings, shards, secret=SECRET)
            )
            result.gateways.append(gw)
        yield result


async def stop_process(proc: trio.Process, timeout_s: float = 10.0) -> None:
    """SIGTERM first (``danmaku up`` then stops its Redis child), SIGKILL only if it hangs: a
    test that fails half-way must not leave an orphaned redis-server behind."""
    if proc.returncode is None:
        proc.terminate()
        with trio.move_on_after(timeout_s):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


DANMAKU_CLI = [sys.executable, "-m", "engine.cli"]


@asynccontextmanager
async def running_up(
    data_dir: Path, env: dict[str, str], *, until: bytes, timeout_s: float = 60.0
) -> AsyncIterator[tuple[trio.Process, str]]:
    """``danmaku up`` as a child process, yielded with its banner (read until ``until``); on
    the way out it is stopped (SIGTERM first, see ``stop_process``) and its pipe closed."""
    proc = await trio.lowlevel.open_process(
        [*DANMAKU_CLI, "up", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    assert proc.stdout is not None
    try:
        banner = b""
        with trio.fail_after(timeout_s):
            while until not in banner:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, banner
                banner += chunk
        yield proc, banner.decode()
    finally:
        await stop_process(proc)
        await proc.stdout.aclose()
