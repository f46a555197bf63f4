"""ClickHouse fixtures for the archive tests: the embedded engine and a real server process.

Use from a test module with ``pytest_plugins = ["tests.archive_fixtures"]``.

* ``clickhouse_server`` – Debian's ``clickhouse-server`` started once per session on free
  loopback ports in a temp dir (polled on ``/ping``), stopped at the end. Tests may ``stop()``
  and ``start()`` it (same ports, same data).
* ``chdb_dir``          – the session's one data directory of the embedded engine (chdb allows
  one data path per process, so every chdb test shares it and isolates itself by database).
* ``archive_dsn``       – parametrized over both engines: a DSN with a fresh database per test.
* ``archive_store``     – an opened store on that DSN with the schema in place.
* ``archive_stack``     – a real gateway + worker + archiver on real Redis, with an archive.

Mark tests that use them with ``@pytest.mark.redis`` where Redis is involved, as elsewhere.

Test modules both register this module (``pytest_plugins``) and import helpers from it, so it
opts out of assertion rewriting (PYTEST_DONT_REWRITE) instead of warning about the import order.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.archive.archiver import Archiver
from engine.archive.service import open_archiver
from engine.archive.store import ArchiveStore, open_store
from engine.config import ArchiveSettings
from engine.gateway.app import Gateway
from engine.runner import make_shards, open_gateway, open_worker
from rooms.worker import RoomWorker
from tests.stack import SECRET, Stack, stack_settings

CONFIG = "/etc/clickhouse-server/config.xml"
USERS = "/etc/clickhouse-server/users.xml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_clickhouse_server() -> str | None:
    return shutil.which("clickhouse-server") or (
        "/usr/bin/clickhouse-server" if os.path.exists("/usr/bin/clickhouse-server") else None
    )


class ClickHouseServer:
    """One clickhouse-server process with its data in ``root``; restartable on the same ports."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.http_port = _free_port()
        self.tcp_port = _free_port()
        self.interserver_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 30.0) -> None:
        for sub in ("data", "tmp", "uf"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.process = subprocess.Popen(
            [
                self.binary, f"--config-file={CONFIG}", "--",
                f"--path={r}/data/", f"--tmp_path={r}/tmp/", f"--user_files_path={r}/uf/",
                "--listen_host=127.0.0.1", f"--http_port={self.http_port}",
                f"--tcp_port={self.tcp_port}", f"--interserver_http_port={self.interserver_port}",
                f"--users_config={USERS}", f"--logger.log={r}/server.log",
                f"--logger.errorlog={r}/server.err.log",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not self.ping():
            if self.process.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited ({self.process.returncode}); "
                                   f"see {r}/server.err.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"clickhouse-server not answering /ping in {timeout_s} s")
            time.sleep(0.05)  # polling the fresh server for readiness, with a deadline

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=1) as response:
                return bool(response.read().startswith(b"Ok"))
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    binary = find_clickhouse_server()
    if binary is None or not os.path.exists(CONFIG):
        pytest.skip("clickhouse-server is not installed (.ci/run installs it)")
    server = ClickHouseServer(binary, tmp_path_factory.mktemp("clickhouse"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


ENGINES = ("chdb", "server")


def server_dsn(server: ClickHouseServer) -> str:
    """A fresh database on the test server."""
    if server.process is None:  # a test stopped it and failed before restarting it
        server.start()
    return f"{server.url}/t_{uuid.uuid4().hex[:12]}"


def dsn_for(engine: str, request: pytest.FixtureRequest) -> str:
    if engine == "chdb":
        chdb_dir: Path = request.getfixturevalue("chdb_dir")
        return f"chdb://{chdb_dir}?database=t_{uuid.uuid4().hex[:12]}"
    return server_dsn(request.getfixturevalue("clickhouse_server"))


@pytest.fixture(params=ENGINES)
def archive_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def archive_dsn(archive_engine: str, request: pytest.FixtureRequest) -> str:
    return dsn_for(archive_engine, request)


@pytest.fixture
async def archive_store(archive_dsn: str) -> AsyncIterator[ArchiveStore]:
    store = open_store(archive_dsn)
    await store.ensure_schema()
    try:
        yield store
    finally:
        await store.aclose()


# ---- a running engine with an archive ---------------------------------------------------------
FAST_ARCHIVE = ArchiveSettings(
    batch_rows=500, batch_ms=50, retry_min_ms=50, retry_max_ms=400, claim_idle_ms=1_000,
    metrics_port=0, viewers_sample_ms=200,
)


@dataclass
class ArchiveStack(Stack):
    archivers: list[Archiver] = field(default_factory=list)
    store: ArchiveStore | None = None


@asynccontextmanager
async def archive_stack(
    urls: Sequence[str], store: ArchiveStore, *, archiver: bool = True,
    archive: ArchiveSettings = FAST_ARCHIVE, **settings_kw: Any,
) -> AsyncIterator[ArchiveStack]:
    """A gateway + worker (+ archiver) on real Redis, all with ``store`` as their archive."""
    from dataclasses import replace

    settings = replace(stack_settings(urls, **settings_kw), archive=archive)
    async with AsyncExitStack() as stack:
        result = ArchiveStack(settings, stack=stack, store=store)
        shards = await stack.enter_async_context(make_shards(settings))
        worker: RoomWorker = await stack.enter_async_context(
            open_worker(settings, shards, archive=store)
        )
        result.workers.append(worker)
        gw: Gateway
        gw, _listeners = await stack.enter_async_context(
            open_gateway(settings, shards, secret=SECRET, archive=store)
        )
        result.gateways.append(gw)
        if archiver:
            result.archivers.append(
                await stack.enter_async_context(open_archiver(settings, shards, store))
            )
        yield result


async def eventually(check: Callable[[], Awaitable[bool]], *, every_s: float = 0.05) -> None:
    """Poll state outside this process (Redis, ClickHouse) until ``check()`` is true; callers
    bound it with ``fail_after``."""
    while True:
        if await check():
            return
        await trio.sleep(every_s)


async def wait_archived(store: ArchiveStore, room: str, seq: int, timeout_s: float = 20) -> None:
    """Until the archive holds ``room`` up to ``seq``."""

    async def done() -> bool:
        return await store.max_seq(room) >= seq

    with trio.fail_after(timeout_s):
        await eventually(done)
